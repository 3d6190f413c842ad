"""The three studies in --quick form on a tiny cache: every cell filled from its run, laid out as asked."""

import csv
import json
import subprocess
import sys

import pytest

from avhgr.study import StudyOptions, missing, semi, stability


def read_csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def report(runs, cell):
    return json.loads((runs / cell / "seed0" / "report.json").read_text())


def quick(tiny, out, **kw):
    return StudyOptions.quick(str(tiny / "cache"), str(out), device="cpu", batch_size=16, **kw)


def test_stability_quick(tiny, tmp_path):
    opt = quick(tiny, tmp_path, layers=(1, 2), lams=(0.1, 1.0))
    res = stability(opt, log=lambda *a: None)
    assert res["rows"] == ["audio only", "visual only", "baseline", "fg (λ = 0.1)", "fg (λ = 1)", "fgh (λ = 0.1)", "fgh (λ = 1)"]
    assert res["columns"] == ["1 fusion layer", "2 fusion layers"]
    runs = tmp_path / "runs"
    # Every cell of the table is its run's test accuracy (one seed: the mean is that run's).
    cells = {("audio only", ""): "audio", ("visual only", ""): "visual", ("baseline", "1"): "baseline_L1", ("baseline", "2"): "baseline_L2",
             ("fgh (λ = 1)", "2"): "fgh_lam1_L2", ("fg (λ = 0.1)", "1"): "fg_lam0.1_L1"}  # fmt: skip
    rows = read_csv(tmp_path / "stability.csv")
    assert len(rows) == 2 + 5 * 2  # unimodal rows once, each joint method per layer count
    by_key = {(r["method"], r["fusion_layers"]): float(r["mean"]) for r in rows}
    for key, cell in cells.items():
        assert by_key[key] == pytest.approx(report(runs, cell)["video_accuracy"], abs=1e-6), key
    assert res["mean"][2] == pytest.approx([by_key[("baseline", "1")], by_key[("baseline", "2")]], abs=1e-6)
    # The unimodal rows test the base run's stage-1 networks, not networks of their own.
    from safetensors.torch import load_file

    base, visual = load_file(str(runs / "baseline_L1" / "seed0" / "stage1_visual.safetensors")), load_file(str(runs / "visual" / "seed0" / "model.safetensors"))
    assert base.keys() == visual.keys() and all((base[k] == visual[k]).all() for k in base)
    md = (tmp_path / "stability.md").read_text()
    assert md.count("\n| ") == 1 + 7 and "| fgh (λ = 1) |" in md
    assert (tmp_path / "stability.png").stat().st_size > 1000
    # Stage 1 was trained once: the other cells start from the base run.
    runs = tmp_path / "runs"
    assert (runs / "baseline_L1" / "seed0" / "stage1_audio.safetensors").exists()
    assert {r["stage"] for r in read_csv(runs / "baseline_L1" / "seed0" / "metrics.csv")} == {"stage1_audio", "stage1_visual", "stage2_warmup", "stage2"}
    assert {r["stage"] for r in read_csv(runs / "fgh_lam1_L2" / "seed0" / "metrics.csv")} == {"stage2_warmup", "stage2"}
    assert not list(runs.glob("*/seed0/*.resume.pt"))  # finished cells keep weights, not optimiser states
    shared = [runs / cell / "seed0" / "stage1_audio.safetensors" for cell in ("baseline_L1", "fgh_lam1_L2")]
    assert shared[0].stat().st_ino == shared[1].stat().st_ino  # one stage 1 on disk, hard-linked


def test_stability_rerun_only_finishes_what_is_missing(tiny, tmp_path):
    opt = quick(tiny, tmp_path, layers=(1,), lams=(1.0,))
    stability(opt, log=lambda *a: None)
    runs = tmp_path / "runs"
    kept = (runs / "fg_lam1_L1" / "seed0" / "model.safetensors").stat().st_mtime_ns
    (runs / "fgh_lam1_L1" / "seed0" / "report.json").unlink()  # as if killed before this cell ended
    stability(opt, log=lambda *a: None)
    assert (runs / "fg_lam1_L1" / "seed0" / "model.safetensors").stat().st_mtime_ns == kept
    assert (runs / "fgh_lam1_L1" / "seed0" / "report.json").exists()


def test_missing_quick(tiny, tmp_path):
    res = missing(quick(tiny, tmp_path, rates=(0.0, 0.5, 1.0)), log=lambda *a: None)
    rows = res["rows"]
    assert len(rows) == 3 * 3 * 3
    assert {(r["method"], r["scenario"]) for r in rows} == {(m, s) for m in ("baseline", "fg", "fgh") for s in ("audio", "visual", "both")}
    # At rate 0 every scenario is the run's own test; at rate 1 every test video misses the modality.
    runs = tmp_path / "runs"
    for m, cell in (("baseline", "base"), ("fg", "missing_fg_lam1_L2"), ("fgh", "missing_fgh_lam1_L2")):
        at_zero = [r["mean"] for r in rows if r["method"] == m and r["rate"] == 0.0]
        assert at_zero == pytest.approx([report(runs, cell)["video_accuracy"]] * 3, abs=1e-6)
    from avhgr.evaluate import evaluate_run

    gone = evaluate_run(runs / "missing_fgh_lam1_L2" / "seed0", missing="visual", rate=1.0, device="cpu")
    assert gone["videos_missing"] == 6
    assert next(r["mean"] for r in rows if (r["method"], r["scenario"], r["rate"]) == ("fgh", "visual", 1.0)) == pytest.approx(gone["video_accuracy"], abs=1e-6)
    assert (tmp_path / "missing.png").exists() and len(read_csv(tmp_path / "missing.csv")) == 27
    # Three models per seed were trained, not one per rate.
    assert len(list((tmp_path / "runs").glob("*/seed0/report.json"))) == 3


def test_the_studies_share_one_folder(tiny, tmp_path):
    """The README runs stability, then missing, into one --out: missing's cells must not be
    stability's folders of the same name (another base run: refused as other settings)."""
    opt = quick(tiny, tmp_path, layers=(1,), lams=(1.0,), rates=(0.0,))
    stability(opt, log=lambda *a: None)
    res = missing(opt, log=lambda *a: None)
    assert {r["method"] for r in res["rows"]} == {"baseline", "fg", "fgh"}


def test_semi_quick(tiny, tmp_path):
    res = semi(quick(tiny, tmp_path, fractions=(0.5, 1.0), lams=(1.0,)), log=lambda *a: None)
    assert res["rows"] == ["audio", "visual", "baseline", "fg (λ = 1)", "fgh (λ = 1)"]
    assert res["columns"] == ["50 % labelled", "100 % labelled"]
    assert len(res["table"]) == 10
    runs = tmp_path / "runs"
    for r in res["table"]:
        cell = {"audio": "audio", "visual": "visual", "baseline": "baseline"}.get(r["method"], r["method"].split(" ")[0] + "_lam1")
        assert r["mean"] == pytest.approx(report(runs, f"p{r['labeled_fraction']:g}_{cell}")["video_accuracy"], abs=1e-6), r
    # Half the labels: 2 of the 3 training videos of each class keep theirs (rounded up), in every cell of that fraction.
    for cell in ("p0.5_baseline", "p0.5_fgh_lam1"):
        split = json.loads((runs / cell / "seed0" / "split.json").read_text())
        assert sum(e["labeled"] for e in split["train"]) == 12 and len(split["train"]) == 18
    md = (tmp_path / "semi.md").read_text()
    assert "| fgh (λ = 1) |" in md and "50 % labelled" in md


def test_study_cli_rejects_unknown_names(tmp_path):
    res = subprocess.run([sys.executable, "-m", "avhgr", "study", "grid", "--cache", str(tmp_path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    words = " ".join(res.stderr.replace("│", " ").split())  # the parser's box, unwrapped
    assert res.returncode == 2 and "'grid' is not one of 'stability', 'missing', 'semi'" in words and "Traceback" not in res.stderr


def test_the_settings_line_states_what_the_cells_train_with(tmp_path):
    """Left to the recipe, the batch and the draw are the recipe's (the paper's 90 and all windows,
    avhgr's 64 and 20): the report must not state a number no cell trained with."""
    from avhgr.study import StudyOptions, _settings_line

    paper = _settings_line(StudyOptions(cache=str(tmp_path), out=str(tmp_path / "o"), recipe="paper", epochs=3))
    assert "batch 90" in paper and "all windows per file" in paper and "3 epochs of stage 1 and 100 of stage 2" in paper
    mine = _settings_line(StudyOptions(cache=str(tmp_path), out=str(tmp_path / "o"), recipe="avhgr", batch_size=12))
    assert "batch 12" in mine and "20 windows per file" in mine
