"""bench/real_av.py's results file, which is committed so that the long real-data design carries on
across machines: each test answer comes back exactly as it was written, in its order, and a list in
another order than the unit's is kept whole rather than re-read in the wrong order."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("real_av", Path(__file__).resolve().parents[1] / "bench" / "real_av.py")
real_av = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real_av)


def outcomes(videos, correct, seed=0, fold=1):
    return [{"seed": seed, "fold": fold, "video": v, "actor": v.split("/")[0], "correct": c} for v, c in zip(videos, correct)]


def test_results_round_trip_compactly_and_keep_a_list_in_another_order():
    videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in (5, 8) for k in range(3, 9)]
    rng = __import__("random").Random(0)
    answers = lambda: [rng.random() < 0.7 for _ in videos]  # noqa: E731
    unit = {"protocol": "actor", "fold": 1, "seed": 0, "depth": 2, "lam": {"fg": 0.1, "fgh": 1.0},
            "models": {m: {"outcomes": outcomes(videos, answers()), "folder": f"runs/{m}", "digest": "10" * 6, "val": 0.5, "last_epoch": 0.6}
                       for m in ("baseline", "audio only", "visual only", "fg", "fgh")},
            "grid": {"fg λ=1": outcomes(videos, answers()), "reversed": outcomes(videos[::-1], answers())},
            "missing": {m: {"audio@0.5": outcomes(videos, answers())} for m in ("baseline", "fg", "fgh")}}  # fmt: skip
    data = {"units": {"actor/fold1/seed0": unit}, "seconds": {"actor": 120.0}}
    stored = json.dumps(real_av.compact(data), separators=(",", ":"))
    assert len(stored) < len(json.dumps(data)) / 3
    back = real_av.expand(json.loads(stored))
    assert back == data
    assert back["units"]["actor/fold1/seed0"]["models"]["fgh"]["digest"] == "10" * 6  # a 0/1-looking digest stays a digest
    # The bench's own analysis reads the expanded file as it read the one it wrote.
    tables = [real_av.report_markdown(d, None).splitlines()[3:] for d in (back, data)]  # below the dated line
    assert tables[0] == tables[1] and any("fgh − baseline" in line for line in tables[0])


def test_a_feature_cache_defaults_to_what_the_recorded_comparison_chose_most(tmp_path):
    """The defaults for a cache of facial features are the depth and fgh's λ that validation chose
    most often in the recorded actor-disjoint units (docs/results.md): change one, change the other."""
    from collections import Counter

    from avhgr.config import TrainConfig

    results = Path(__file__).resolve().parents[1] / "docs" / "results" / "real_av" / "results.json"
    units = [u for k, u in real_av.expand(json.loads(results.read_text()))["units"].items() if k.startswith("actor/")]
    assert len(units) == 18
    depth, _ = Counter(u["depth"] for u in units).most_common(1)[0]
    lam, _ = Counter(u["lam"]["fgh"] for u in units).most_common(1)[0]
    (tmp_path / "settings.json").write_text(json.dumps({"visual_features": {"kind": "table"}}))
    features = TrainConfig(cache=str(tmp_path), out=str(tmp_path / "run"))
    assert (features.fusion_layers, features.lam, features.corr) == (depth, lam, "fgh")
    assert (features.feature_noise, features.joint_windows, features.windows_per_epoch, features.epochs) == (0.5, 5, 20, 12)
    faces = TrainConfig(cache=str(tmp_path / "no_cache_yet"), out=str(tmp_path / "run"))
    assert (faces.fusion_layers, faces.feature_noise) == (2, 0.0)  # a cache of face crops keeps the avhgr recipe's


def test_the_protocol_gap_pairs_the_recordings_both_protocols_tested():
    """random − actor for one model: only the (seed, recording) pairs both tested, the unit the actor."""
    videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in (5, 8) for k in range(3, 9)]

    def unit(protocol, tested, correct):
        models = {m: {"outcomes": outcomes(tested, correct), "digest": m} for m in ("baseline", "audio only", "visual only", "fg", "fgh")}
        return {"protocol": protocol, "fold": 1, "seed": 0, "models": models}

    actor = unit("actor", videos, [False] * len(videos))
    random_ = unit("random", videos[:6] + videos[8:], [True] * 6 + [True, False, False, False])  # actor 05 all right; 08: 1 of 4
    data = {"units": {"actor/fold1/seed0": actor, "random/fold1/seed0": random_}}
    gap = real_av.protocol_gap(data, "baseline")
    assert gap["recordings"] == 10
    assert gap["gap"]["per_unit"] == {"Actor_05": 1.0, "Actor_08": 0.25} and abs(gap["gap"]["mean"] - 0.625) < 1e-9
    assert real_av.protocol_gap({"units": {"actor/fold1/seed0": actor}}, "baseline") is None
    assert any(line.startswith("| baseline | ") for line in real_av.gap_markdown(data))


def test_the_modality_dropout_table_pairs_every_model_within_the_parts_own_stage_1_and_names_its_question():
    videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in (5, 8) for k in range(3, 9)]
    right = lambda n: outcomes(videos, [i < n for i in range(len(videos))])  # noqa: E731  # the first n right
    main = {m: {"outcomes": right(12), "digest": m} for m in ("baseline", "audio only", "visual only", "fg", "fgh")}  # another stage 1
    dropout = {"baseline": {"outcomes": right(6), "digest": "b", "missing": {"audio@0.5": right(4)}},
               "audio only": {"outcomes": right(7), "digest": "a"}, "visual only": {"outcomes": right(5), "digest": "v"},
               "baseline md0.25": {"outcomes": right(7), "digest": "b25", "missing": {"audio@0.5": right(5)}},
               "baseline md0.5": {"outcomes": right(9), "digest": "b50", "missing": {"audio@0.5": right(8)}},
               "fgh md0.5": {"outcomes": right(10), "digest": "b50", "missing": {"audio@0.5": right(9)}}}  # fmt: skip
    unit = {"protocol": "actor", "fold": 1, "seed": 0, "models": main, "dropout": dropout}
    rows = {label: (d, question) for _, _, label, d, question in real_av.dropout_rows([unit])}
    assert [label for label, (_, q) in rows.items() if q] == ["baseline md0.5 − audio only"]
    # Actor_05 all right in both; Actor_08 3 of 6 against 1 of 6: against the part's own audio only, not the main one (12 right)
    assert abs(rows["baseline md0.5 − audio only"][0]["mean"] - 1 / 6) < 1e-9
    assert abs(rows["baseline − audio only"][0]["mean"] - (-1 / 12)) < 1e-9
    assert abs(rows["baseline md0.5 − baseline"][0]["mean"] - 1 / 4) < 1e-9  # the part's baseline (6 right), not the main one
    assert abs(rows["fgh md0.5 − baseline md0.5"][0]["mean"] - 1 / 12) < 1e-9  # the baseline it started from, not md0 or md0.25
    assert "baseline − baseline" not in rows
    table = real_av.dropout_markdown([unit])
    assert any("(**question**)" in line and line.startswith("| baseline md0.5 − audio only") for line in table)
    same = [line.rsplit(" | ", 1)[1] for line in table if line.startswith("| fgh md0.5 − baseline md0.5 |")]
    assert same == ["1 of 1 |"]  # the same digest as the baseline it started from: said, not hidden
    missing = [line for line in table if line.startswith("| audio | 0.5 |")]
    assert len(missing) == 1 and "66.7 %" in missing[0] and "33.3 %" in missing[0]  # md0.5 8 of 12 (Actor_08 2 of 6), baseline 4 (0 of 6)
    assert missing[0].split(" | ")[-2].startswith("+33.3 points")  # md0.5 − the part's baseline: (+2, +2)/6, against md0.25 it'd be +25
    assert missing[0].split(" | ")[-1].startswith("+8.3 points")  # fgh md0.5 − md0.5: (0, +1)/6; against md0.25 +33.3, the baseline +41.7


def test_which_input_a_fused_model_follows_is_its_correlation_over_actors_with_each_modality_alone():
    actors = (1, 2, 3)
    videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in actors for k in range(3, 7)]  # 4 per actor
    per_actor = lambda *n: outcomes(videos, [k < n[i // 4] for i in range(12) for k in [i % 4]])  # noqa: E731  # n[j] right of actor j's 4
    dropout = {"baseline": {"outcomes": per_actor(1, 2, 4), "digest": "b", "missing": {}},
               "audio only": {"outcomes": per_actor(4, 2, 1), "digest": "a"}, "visual only": {"outcomes": per_actor(0, 1, 3), "digest": "v"}}
    unit = {"protocol": "actor", "fold": 1, "seed": 0, "models": {}, "dropout": dropout}
    audio, au = real_av.follows([unit], "baseline")
    assert audio < -0.9 and au > 0.9  # up with the action units, down with audio
    row = [line for line in real_av.dropout_markdown([unit]) if line.startswith("| baseline | ")]
    assert row and f"{au:+.2f}" in row[0] and f"{audio:+.2f}" in row[0]
    assert all(v != v for v in real_av.follows([{**unit, "dropout": {**dropout, "audio only": dropout["baseline"] | {"outcomes": per_actor(2, 2, 2)}}}], "baseline")[:1])


def test_the_semi_supervised_table_pairs_each_fraction_within_itself_on_the_units_that_have_every_fraction():
    def unit(fold, actors, fractions):
        videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in actors for k in range(3, 9)]
        right = lambda n, m=0: outcomes(videos, [i < n or 6 <= i < 6 + m for i in range(12)], fold=fold)  # noqa: E731  # n of the first actor's, m of the second's
        models = {"baseline": {"outcomes": right(4, 2), "digest": "b"}, "audio only": {"outcomes": right(3), "digest": "a"},
                  "visual only": {"outcomes": right(2), "digest": "v"}, "fg": {"outcomes": right(4, 2), "digest": "b"},
                  "fgh": {"outcomes": right(5, 4), "digest": "h"}}  # fmt: skip
        semi = {f: {"baseline": {"outcomes": right(1), "digest": "s"}, "audio only": {"outcomes": right(0), "digest": "sa"},
                    "visual only": {"outcomes": right(6), "digest": "sv"}, "fg": {"outcomes": right(1), "digest": "s"},
                    "fgh": {"outcomes": right(4, 1) if f == "0.1" else right(6, 6), "digest": "sh"}} for f in fractions}  # fmt: skip
        return {"protocol": "actor", "fold": fold, "seed": 0, "models": models, "semi": semi}

    whole, partial = unit(1, (5, 8), ("0.1", "0.5")), unit(2, (3, 10), ("0.1",))
    table = real_av.semi_markdown([whole, partial])
    assert "1 units, 2 actors" in table[0] and any("1 unit(s) with only some" in line for line in table)  # fold 2 has no 0.5 yet: left out
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table if line.startswith("| 10 ") or line.startswith("| 50 ")
            or line.startswith("| 100 ")}  # fmt: skip
    ten, half, full = rows["10 %"], rows["50 %"], rows["100 %"]
    assert ten[1:6] == ["0.0 %", "50.0 %", "8.3 %", "8.3 %", "41.7 %"]  # each fraction's own models, actors 05 and 08 only
    assert full[1:6] == ["25.0 %", "16.7 %", "50.0 %", "50.0 %", "75.0 %"]  # the main models of the same unit
    assert ten[6].startswith("+33.3") and half[6].startswith("+91.7") and full[6].startswith("+25.0")  # per actor: (+3, +1)/6, (+5, +6)/6, (+1, +2)/6
    assert ten[8].startswith("-41.7") and full[8].startswith("+33.3")  # baseline − visual only: (-5, 0)/6 in the fraction, (+2, +2)/6 in the main
    assert ten[-1] == "1, 0 of 1 |" and full[-1] == "1, 0 of 1 |"  # fg kept its baseline's weights: said, in each row
    assert real_av.semi_markdown([]) == []


def test_the_tables_name_the_machine_each_part_was_trained_on_and_count_those_not_recorded():
    videos = ["Actor_05/03-01-03-01-01-01-05.wav"]
    models = {m: {"outcomes": outcomes(videos, [True]), "digest": m, "last_epoch": None} for m in ("baseline", "audio only", "visual only", "fg", "fgh")}
    unit = lambda fold: {"protocol": "actor", "fold": fold, "seed": 0, "models": models, "lam": {"fg": 1.0, "fgh": 1.0}, "depth": 1,  # noqa: E731
                         "grid": {}, "semi": {"0.1": models}}  # fmt: skip
    data = {"units": {"actor/fold1/seed0": unit(1), "actor/fold2/seed0": unit(2)},
            "trained_on": {"actor/fold2/seed0": "the CPU (2-core X) in float32", "semi0.1/fold2/seed0": "a GPU (Y) in bf16 autocast"}}  # fmt: skip
    header = real_av.report_markdown(data, None).splitlines()[2]
    assert "the CPU (2-core X) in float32 (1 of the 4 parts of units)" in header and "a GPU (Y) in bf16 autocast (1 of the 4" in header
    assert "not recorded for 2 " in header  # fold 1's unit and its 10 % part


def test_the_late_fusion_table_pairs_the_product_with_the_parts_own_baseline_and_names_its_question(tmp_path):
    videos = [f"Actor_{a:02d}/03-01-0{k}-01-01-01-{a:02d}.wav" for a in (5, 8) for k in range(3, 9)]
    right = lambda n: outcomes(videos, [i < n for i in range(len(videos))])  # noqa: E731  # the first n right
    main = {m: {"outcomes": right(12), "digest": m} for m in ("baseline", "audio only", "visual only", "fg", "fgh")}  # another stage 1
    late = {"baseline": {"outcomes": right(6), "digest": "b", "missing": {"visual@0.5": right(3)}},
            "fgh": {"outcomes": right(7), "digest": "f", "missing": {"visual@0.5": right(4)}},
            "audio only": {"outcomes": right(8), "digest": "a"}, "visual only": {"outcomes": right(5), "digest": "v"},
            "product": {"outcomes": right(10), "weight": 0.5, "missing": {"visual@0.5": right(9)}},
            "product, val weight": {"outcomes": right(11), "weight": 0.65, "missing": {"visual@0.5": right(9)}}}  # fmt: skip
    unit = {"protocol": "actor", "fold": 1, "seed": 0, "models": main, "late": late}
    rows = {label: d for _, _, label, d, _ in real_av.late_rows([unit])}
    assert [label for _, _, label, _, q in real_av.late_rows([unit]) if q] == ["product − baseline"]
    # Actor_05 6 of 6 in both; Actor_08 4 of 6 against 0 of 6: against the part's baseline (6 right), not the main one (12)
    assert abs(rows["product − baseline"]["mean"] - 1 / 3) < 1e-9
    assert abs(rows["product − audio only"]["mean"] - 1 / 6) < 1e-9 and abs(rows["product − fgh"]["mean"] - 1 / 4) < 1e-9
    table = real_av.late_markdown([unit])
    assert any("(**question**)" in line and line.startswith("| product − baseline") for line in table)
    assert [line.rsplit(" | ", 1)[1] for line in table if line.startswith("| fgh − baseline |")] == ["0 of 1 |"]
    assert [line.rsplit(" | ", 1)[1] for line in table if line.startswith("| product − baseline")] == ["– |"]  # no weights of its own
    assert any("0.65 1x" in line for line in table)  # the weight validation chose, counted
    missing = [line for line in table if line.startswith("| action units | 0.5 |")]
    assert len(missing) == 1 and missing[0].split(" | ")[-2].startswith("+50.0 points")  # product 9 − baseline 3 of 12: (0, +6)/6 / 2
    assert missing[0].split(" | ")[-1].startswith("+41.7 points")  # − fgh (4 right)
    real_av.forest_png({"units": {"actor/fold1/seed0": unit}}, tmp_path / "forest.png")  # its rows drawn beside the others
    assert (tmp_path / "forest.png").stat().st_size > 1000
