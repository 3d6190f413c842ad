"""What the paper's idea does on real faces and voices: RAVDESS speech (actors 1-12, six classes) with
the facial action units of the same takes, every model paired, every actor tested once per seed.

    .venv/bin/python bench/real_av.py --speech ../shared/data/ravdess_speech --au ../shared/data/ravdess_au
    .venv/bin/python bench/real_av.py ... --seeds 0,1,2 --parts main,missing,semi,random    # the full design

The primary comparison, named before any run: **fgh − baseline on the actor-disjoint protocol**,
each with its fusion depth and λ chosen on the fold's validation actors, the unit the actor (its
paired difference averaged over seeds), the 95 % t interval over the 12 actors (``stats.unit_paired``).
Every other row is secondary.

Design. A unit is (protocol, fold, seed). The folds are a fixed partition (``data.split_videos``):
``actor`` tests two actors per fold, validates on the next two and trains on the other eight;
``random`` (the paper's protocol) partitions each class's recordings in six, so actors are shared
between train and test. In each unit:

1. ``baseline_L2`` trains stage 1 (a ResNet-18 on spectrograms, 12 epochs of 20 of the 60 cached
   windows per recording: the audio-only default; an MLP on the 35 action units with feature noise
   0.5), the one-epoch fusion warm-up with two fusion layers and stage 2 with CE alone. The
   audio-only and visual-only models are its two stage-1 networks.
2. ``baseline_L1`` starts from its stage 1 and trains its own warm-up with one fusion layer.
3. The baseline's depth is chosen by validation (video accuracy, then window accuracy, then two
   layers); fg and fgh at λ 0.01, 0.1 and 1 start from the baseline of that depth and take its very
   warm-up weights, so in a unit every method has the same stage 1, warm-up and batches; each
   method's λ is chosen by validation (ties: the λ nearest 1).
4. ``missing``: the chosen baseline, fg and fgh of each main unit, their test recordings with the
   audio or the action units removed at rates 0.25, 0.5 and 0.75 (no retraining).
5. ``semi``: 10, 25 and 50 % of the training recordings labelled (stage 1 on those; fg's L_corr sees
   every training pair, h only the labelled), baseline, fg and fgh at the unit's chosen depth and λ.
6. ``dropout`` (secondary, asks why the fused baseline is not above audio only): a stage 1 of its
   own (so it runs wherever the unit is recorded), the baseline at the unit's depth and the two
   unimodal networks from it; the baseline trained again from that stage 1 with modality dropout
   0.25 and 0.5 in the warm-up and stage 2 (a share of the training windows loses its audio or its
   action units), and fgh at the unit's λ from the 0.5 baseline; each fused model with the
   missing-modality sweep. Its question, named before running: **baseline with modality dropout
   0.5 − audio only**, unit the actor.
7. ``late`` (secondary, asks whether the fusion network is what makes the fused model follow the
   action units): a stage 1 of its own, the baseline at the unit's depth, fgh at the unit's λ from
   it, the two unimodal networks, and their product of experts (``models.ProductModel``: per window
   p ∝ p_audio · p_visual, nothing trained on top), plain and with the audio weight chosen on the
   fold's validation actors; each fused model with the missing-modality sweep. Its question, named
   before running: **product − baseline**, unit the actor. The rule for the defaults, written after
   its first unit (fold 0, seed 0) and before the others: a cache of facial features defaults to
   ``--fusion product`` only if product − fgh (the default model, from the same stage 1) is above
   zero with its whole interval over actors.

The settings are pinned (``PINNED``): the recipe as the benchmark started under, so that a later
change of the defaults for facial features does not change the units still to run.

Resumable: every run is a folder of its own under ``--out`` (``train_owned``, large: keep it out of
version control); rerun the command and finished runs are read back. The results (``results.json``,
each test answer of each model, compact; ``results.md``; ``forest.png``) go to ``--results``
(small: commit them) after every unit, so a run cut short reports what it finished, and a unit
recorded there is not trained again even where ``--out`` is gone (another machine, a cleaned
disk). The missing-modality sweep of a unit runs right after it, while its models are on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avhgr.cache import Cache
from avhgr.datasets import index_dataset, select_emotions
from avhgr.features import FeatureSettings
from avhgr.precision import default_amp, describe_machine
from avhgr.preprocess import default_workers, run_preprocess
from avhgr.runs import weights_digest
from avhgr.stats import UNIT_RULE, unit_accuracy, unit_paired
from avhgr.train import TrainConfig, train_owned

# The avhgr recipe for a cache of facial features when this benchmark started (2026-12-02). Passed
# to every run as a default, not as a setting given (a no-op of it for a unimodal run is not
# refused), so that train_owned does not train recorded runs again under newer defaults.
PINNED = dict(backbone="resnet18", epochs=12, joint_epochs=2, windows_per_epoch=20, joint_windows=5, val_windows=20, feature_noise=0.5,
              fusion_warmup=1, lam_warmup=0, modality_dropout=0.0, feature_norm="batch", weight_decay=0.05, schedule="cosine",
              batch_size=64, spec_augment=True, level="window", evidence=True, fusion="network")  # fmt: skip
DROPOUTS = (0.25, 0.5)
DROPOUT_BASE = f"baseline md{max(DROPOUTS):g}"  # the dropout baseline fgh starts from, and the question's
PRODUCT_WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)  # the late-fusion part's audio weights, chosen among on validation

LAMS = (0.01, 0.1, 1.0)
DEPTHS = (2, 1)  # the recipe's first: it trains stage 1
RATES = (0.25, 0.5, 0.75)
FRACTIONS = (0.1, 0.25, 0.5)
QUIET = lambda *a, **k: None  # noqa: E731
PRIMARY = ("actor", "fgh", "baseline")


def make_cache(args) -> Path:
    from avhgr.visual_features import open_table

    table = args.au / "ravdess_au_actors_01-12.csv" if args.au.is_dir() else args.au
    videos, classes = select_emotions(index_dataset("ravdess", args.speech), "basic6")
    cache = args.out / "cache"
    run_preprocess(videos, classes, cache, FeatureSettings(), args.speech, "ravdess", workers=default_workers(), progress=False,
                   features=open_table(table))  # fmt: skip
    return cache


def chosen(candidates: list[tuple[str, dict, float]]) -> str:
    """The name of the candidate with the best validation (video accuracy, window accuracy, then the
    tie-break value, larger wins)."""
    return max(candidates, key=lambda c: (c[1]["stages"]["stage2"]["best_val_video_accuracy"],
                                          c[1]["stages"]["stage2"]["best_val_window_accuracy"], c[2]))[0]  # fmt: skip


class Bench:
    def __init__(self, args, cache: Path):
        self.args, self.cache = args, cache
        self.subjects = {v["path"]: v["subject"] for v in Cache.open(cache).videos}
        self.path = args.results / "results.json"
        self.data = expand(json.loads(self.path.read_text())) if self.path.exists() else {}
        self.data.setdefault("units", {})
        self.data.setdefault("seconds", {})
        self.t0 = time.time()

    def folder(self, protocol: str, fold: int, seed: int, name: str) -> Path:
        return self.args.out / "runs" / protocol / f"fold{fold}_seed{seed}" / name

    def run(self, protocol: str, fold: int, seed: int, name: str, account: str | None = None, **kw) -> dict:
        folder = self.folder(protocol, fold, seed, name)
        split = "random" if protocol == "random" else "actor"
        t0 = time.time()
        settings = PINNED | self.args.extra | kw
        report = train_owned(TrainConfig(cache=str(self.cache), out=str(folder), split=split, fold=fold, seed=seed, device=self.args.device,
                                         given=frozenset(kw), **settings), log=QUIET)  # fmt: skip
        if time.time() - t0 > 5:  # trained now, not read back
            key = account or protocol.rstrip("0123456789.") or protocol
            self.data["seconds"][key] = self.data["seconds"].get(key, 0) + (time.time() - t0)
            where = f"{describe_machine(self.args.device)} in {'bf16 autocast' if report['config']['amp'] else 'float32'}"
            self.data.setdefault("trained_on", {})[f"{account or protocol}/fold{fold}/seed{seed}"] = where
        report["folder"] = str(folder)
        return report

    def outcomes(self, report: dict, fold: int, seed: int, predictions=None) -> list[dict]:
        preds = predictions if predictions is not None else report["predictions"]
        return [{"seed": seed, "fold": fold, "video": p["path"], "actor": self.subjects[p["path"]], "correct": p["pred"] == p["label"]}
                for p in preds]  # fmt: skip

    def digest(self, report: dict) -> str:
        return weights_digest(Path(report["folder"]) / "model.safetensors")

    # ---- one unit of a protocol (actor or random): the depth and λ chosen by validation

    def unit(self, protocol: str, fold: int, seed: int) -> dict:
        key = f"{protocol}/fold{fold}/seed{seed}"
        if key in self.data["units"]:
            return self.data["units"][key]
        base = self.run(protocol, fold, seed, "baseline_L2", corr="none", fusion_layers=2)
        init = dict(init_from=base["folder"])
        audio = self.run(protocol, fold, seed, "audio_only", modalities=("audio",), **init)
        visual = self.run(protocol, fold, seed, "visual_only", modalities=("visual",), **init)
        baselines = {2: base, 1: self.run(protocol, fold, seed, "baseline_L1", corr="none", fusion_layers=1, **init)}
        depth = int(chosen([(str(d), r, d) for d, r in baselines.items()]))
        unit = {"protocol": protocol, "fold": fold, "seed": seed, "depth": depth, "lam": {}, "models": {}, "grid": {}}
        keep = {"baseline": baselines[depth], "audio only": audio, "visual only": visual}
        for method in ("fg", "fgh"):
            runs = {lam: self.run(protocol, fold, seed, f"{method}_lam{lam:g}_L{depth}", corr=method, lam=lam, fusion_layers=depth,
                                  init_from=baselines[depth]["folder"]) for lam in LAMS}  # fmt: skip
            lam = float(chosen([(str(lam), r, -abs(np.log10(lam))) for lam, r in runs.items()]))
            unit["lam"][method] = lam
            keep[method] = runs[lam]
            for lam_, r in runs.items():
                unit["grid"][f"{method} λ={lam_:g}"] = self.outcomes(r, fold, seed)
        for name, r in keep.items():
            unit["models"][name] = {"outcomes": self.outcomes(r, fold, seed), "folder": r["folder"], "digest": self.digest(r),
                                    "val": r["stages"].get("stage2", {}).get("best_val_video_accuracy"),
                                    "last_epoch": (r.get("last_epoch") or {}).get("video_accuracy"),
                                    "train_seconds": r.get("train_seconds")}  # fmt: skip
        unit["grid"]["baseline L1"] = self.outcomes(baselines[1], fold, seed)
        unit["grid"]["baseline L2"] = self.outcomes(baselines[2], fold, seed)
        self.data["units"][key] = unit
        return unit

    def missing(self, fold: int, seed: int) -> None:
        key = f"actor/fold{fold}/seed{seed}"
        unit = self.data["units"][key]
        if "missing" in unit:
            return
        folders = self.unit_folders(fold, seed)
        if folders is None:  # recorded on another machine or disk: its models are not here
            if not self.args.retrain_for_missing:
                print(f"{key}: its models are not under {self.args.out}: no missing-modality sweep for it "
                      "(--retrain-for-missing trains the unit again and replaces its record)", flush=True)  # fmt: skip
                return
            old = self.data["units"].pop(key)
            unit = self.unit("actor", fold, seed)
            if old.get("semi") and (unit["depth"], unit["lam"]) == (old["depth"], old["lam"]):  # its semi runs used the same choices
                unit["semi"] = old["semi"]
            folders = self.unit_folders(fold, seed)
        t0 = time.time()
        unit["missing"] = {name: self.sweep(folders[name], fold, seed) for name in ("baseline", "fg", "fgh")}
        self.data["seconds"]["missing"] = self.data["seconds"].get("missing", 0) + time.time() - t0

    def unit_folders(self, fold: int, seed: int) -> dict[str, Path] | None:
        """The actor unit's chosen models under --out, or None where they are not there."""
        unit = self.data["units"][f"actor/fold{fold}/seed{seed}"]
        folders = {name: self.folder("actor", fold, seed, Path(m["folder"]).name) for name, m in unit["models"].items()}
        return folders if all(f.is_dir() for f in folders.values()) else None

    def sweep(self, folder: Path, fold: int, seed: int) -> dict:
        from avhgr.evaluate import evaluate_missing

        sweep = evaluate_missing(str(folder), ("audio", "visual"), RATES, seed=seed, device=self.args.device)
        return {f"{s}@{r:g}": self.outcomes(None, fold, seed, m["predictions"]) for (s, r), m in sweep.items()}

    def dropout(self, fold: int, seed: int) -> None:
        """Modality dropout (secondary), on a stage 1 of its own so that it runs anywhere the unit is
        recorded: the part's baseline at the unit's depth (which trains that stage 1) with its
        audio-only and visual-only networks, the baseline trained again from the same stage 1 at each
        rate, and fgh at the unit's λ from the 0.5 baseline's warm-up; each fused model with its
        missing-modality sweep. Every model of the part is paired with the others, not with the
        unit's main models (another stage 1)."""
        key = f"actor/fold{fold}/seed{seed}"
        unit = self.data["units"].get(key)
        if unit is None:
            print(f"{key}: not recorded yet (--parts main first): no modality-dropout runs for it (they take its depth and λ)", flush=True)
            return
        if "dropout" in unit:
            return
        depth, lam = unit["depth"], unit["lam"]["fgh"]

        def run(name: str, **kw) -> dict:
            return self.run("dropout", fold, seed, name, account="dropout", **kw)

        base = run(f"baseline_L{depth}", corr="none", fusion_layers=depth)
        out = {"baseline": base, "audio only": run("audio_only", modalities=("audio",), init_from=base["folder"]),
               "visual only": run("visual_only", modalities=("visual",), init_from=base["folder"])}  # fmt: skip
        for rate in DROPOUTS:
            name = f"baseline md{rate:g}"
            out[name] = run(f"baseline_md{rate:g}_L{depth}", corr="none", fusion_layers=depth, modality_dropout=rate, init_from=base["folder"])
            if name == DROPOUT_BASE:
                out[f"fgh md{rate:g}"] = run(f"fgh_lam{lam:g}_md{rate:g}_L{depth}", corr="fgh", lam=lam, fusion_layers=depth,
                                             modality_dropout=rate, init_from=out[name]["folder"])  # fmt: skip
        t0 = time.time()  # the runs counted their own time
        unit["dropout"] = {name: {"outcomes": self.outcomes(r, fold, seed), "digest": self.digest(r),
                                  **({} if name.endswith(" only") else {"missing": self.sweep(Path(r["folder"]), fold, seed)})}
                           for name, r in out.items()}  # fmt: skip
        self.data["seconds"]["dropout"] = self.data["seconds"].get("dropout", 0) + time.time() - t0

    def late(self, fold: int, seed: int) -> None:
        """Late fusion (secondary, asks whether the fusion network is what keeps the fused model
        near the action units): a stage 1 of its own, the baseline at the unit's depth and fgh at
        the unit's λ from it, its two stage-1 networks alone, and their product of experts (each
        window: p ∝ p_audio · p_visual where it has both inputs), with nothing trained on top;
        beside it the product with the audio weight chosen on the fold's validation actors. Each
        fused model with the missing-modality sweep."""
        key = f"actor/fold{fold}/seed{seed}"
        unit = self.data["units"].get(key)
        if unit is None:
            print(f"{key}: not recorded yet (--parts main first): no late-fusion runs for it (they take its depth and λ)", flush=True)
            return
        if "late" in unit:
            return
        depth, lam = unit["depth"], unit["lam"]["fgh"]

        def run(name: str, **kw) -> dict:
            return self.run("late", fold, seed, name, account="late", **kw)

        base = run(f"baseline_L{depth}", corr="none", fusion_layers=depth)
        out = {"baseline": base, "fgh": run(f"fgh_lam{lam:g}_L{depth}", corr="fgh", lam=lam, fusion_layers=depth, init_from=base["folder"]),
               "audio only": run("audio_only", modalities=("audio",), init_from=base["folder"]),
               "visual only": run("visual_only", modalities=("visual",), init_from=base["folder"])}  # fmt: skip
        t0 = time.time()
        late = {name: {"outcomes": self.outcomes(r, fold, seed), "digest": self.digest(r),
                       **({} if name.endswith(" only") else {"missing": self.sweep(Path(r["folder"]), fold, seed)})}
                for name, r in out.items()}  # fmt: skip
        late.update(self.products(out, fold, seed))
        unit["late"] = late
        self.data["seconds"]["late"] = self.data["seconds"].get("late", 0) + time.time() - t0

    def products(self, runs: dict, fold: int, seed: int) -> dict:
        """The product of the unit's two stage-1 networks (``ProductModel``), plain (audio weight 0.5)
        and with the weight of best validation video accuracy over every cached window of the
        validation recordings (ties: window accuracy, then nearest 0.5, then the lower weight),
        each with its test answers and missing-modality sweep. Each network answers every
        validation and test window once; every weight and sweep combines those answers."""
        from avhgr.cache import Cache as _Cache
        from avhgr.data import WindowReader
        from avhgr.distributed import resolve_device
        from avhgr.evaluate import ProductAnswers, metrics, missing_sweep
        from avhgr.models import ProductModel
        from avhgr.precision import inference_amp
        from avhgr.runs import RunFolder, load_model

        dev = resolve_device(self.args.device)
        (audio, audio_card), (visual, visual_card) = (load_model(runs[m]["folder"], dev) for m in ("audio only", "visual only"))
        card = json.loads((Path(runs["baseline"]["folder"]) / "model.json").read_text())
        if audio_card["audio_stats"] != card["audio_stats"] or visual_card["visual_input"].get("stats") != card["visual_input"].get("stats"):
            raise RuntimeError(f"{runs['baseline']['folder']}: its stage-1 networks were fed otherwise than the joint model (input statistics differ)")
        data = _Cache.open(self.cache)
        reader = WindowReader(data, tuple(card["audio_stats"]), ("audio", "visual"), card["level"], card["evidence"], card["visual_input"]["stats"])
        ids = {v["path"]: v["id"] for v in data.videos}
        split = RunFolder(runs["baseline"]["folder"]).split()
        val, test = ([ids[e["path"]] for e in split[part]] for part in ("val", "test"))
        model, amp = ProductModel(audio, visual), inference_amp(card["amp"], dev)
        answers = ProductAnswers(model, reader, reader.windows(val + test), dev, amp)
        probabilities = answers.probabilities

        scored = {}
        for w in PRODUCT_WEIGHTS:
            windows = reader.windows(val)
            m = metrics(probabilities(reader, windows, w), windows, data, val)
            scored[w] = (m["video_accuracy"], m["window_accuracy"], -abs(w - 0.5))
        best = max(PRODUCT_WEIGHTS, key=lambda w: scored[w])
        out = {}
        for name, w in (("product", 0.5), ("product, val weight", best)):
            # rate 0 of one scenario: every test recording whole (the sweep names each answer's recording)
            sweep = missing_sweep(model, reader, data, test, dev, amp, ("audio", "visual"), (0.0, *RATES), seed,
                                  probabilities=lambda r, windows, w=w: probabilities(r, windows, w))  # fmt: skip
            out[name] = {"outcomes": self.outcomes(None, fold, seed, sweep[("audio", 0.0)]["predictions"]), "weight": w, "val": scored[w][0],
                         "missing": {f"{s}@{r:g}": self.outcomes(None, fold, seed, c["predictions"]) for (s, r), c in sweep.items() if r}}  # fmt: skip
        out["product, val weight"]["val_by_weight"] = {f"{w:g}": scored[w][0] for w in PRODUCT_WEIGHTS}
        return out

    def semi(self, fold: int, seed: int, fraction: float) -> None:
        unit = self.data["units"][f"actor/fold{fold}/seed{seed}"]
        if f"{fraction:g}" in unit.setdefault("semi", {}):
            return
        protocol, depth = f"semi{fraction:g}", unit["depth"]
        base = self.run(protocol, fold, seed, f"baseline_L{depth}", corr="none", fusion_layers=depth, labeled_fraction=fraction)
        init = dict(init_from=base["folder"], labeled_fraction=fraction)
        models = {"baseline": base, "audio only": self.run(protocol, fold, seed, "audio_only", modalities=("audio",), **init),
                  "visual only": self.run(protocol, fold, seed, "visual_only", modalities=("visual",), **init)}  # fmt: skip
        for method in ("fg", "fgh"):
            lam = unit["lam"][method]
            models[method] = self.run(protocol, fold, seed, f"{method}_lam{lam:g}_L{depth}", corr=method, lam=lam, fusion_layers=depth, **init)
        unit["semi"][f"{fraction:g}"] = {n: {"outcomes": self.outcomes(r, fold, seed), "digest": self.digest(r)} for n, r in models.items()}

    # ---- the tables

    def save(self) -> None:
        self.data["minutes_this_call"] = round((time.time() - self.t0) / 60, 1)
        self.args.results.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")  # a kill while writing keeps the last whole file
        tmp.write_text(json.dumps(compact(self.data), separators=(",", ":")) + "\n")
        tmp.replace(self.path)
        (self.args.results / "results.md").write_text(report_markdown(self.data, self.args))
        forest_png(self.data, self.args.results / "forest.png")


# --------------------------------------------------------------------------- the results file
# Each unit's test answers are lists of {seed, fold, video, actor, correct}, one per test recording, in
# the same order for every model of the unit: stored once as the unit's recordings, and each list as a
# string of 0/1 in that order (about 100 times smaller; results.json is meant to be committed).

OUTCOME_KEYS = {"seed", "fold", "video", "actor", "correct"}


def _is_outcomes(x) -> bool:
    return isinstance(x, list) and bool(x) and isinstance(x[0], dict) and set(x[0]) == OUTCOME_KEYS


def compact(data: dict) -> dict:
    out = {**data, "units": {}}
    for key, unit in data["units"].items():
        order = None

        def walk(x):
            nonlocal order
            if _is_outcomes(x):
                videos = [(o["video"], o["actor"]) for o in x]
                order = order or videos
                if videos == order:
                    return "".join("1" if o["correct"] else "0" for o in x)
                return x  # another order: kept as it is
            if isinstance(x, dict):
                return {k: walk(v) for k, v in x.items()}
            return x

        body = walk(unit)
        out["units"][key] = {**body, "recordings": order}
    return out


def expand(data: dict) -> dict:
    out = {**data, "units": {}}
    for key, unit in data.get("units", {}).items():
        unit = dict(unit)
        order = unit.pop("recordings", None)

        def walk(x, where):
            if isinstance(x, str) and order and len(x) == len(order) and set(x) <= {"0", "1"} and where != "digest":
                return [{"seed": unit["seed"], "fold": unit["fold"], "video": v, "actor": a, "correct": c == "1"} for (v, a), c in zip(order, x)]
            if isinstance(x, dict):
                return {k: walk(v, k) for k, v in x.items()}
            return x

        out["units"][key] = walk(unit, None)
    return out


# --------------------------------------------------------------------------- analysis


def units_of(data: dict, protocol: str) -> list[dict]:
    return [u for u in data["units"].values() if u["protocol"] == protocol]


def model_outcomes(units: list[dict], name: str, where=lambda u: u["models"]) -> list[dict]:
    return [o for u in units for o in where(u)[name]["outcomes"]]


def comparisons(data: dict) -> list[tuple[str, str, dict, bool]]:
    """(protocol, label, unit_paired result, primary?) for every paired difference the data allows."""
    rows = []
    for protocol in ("actor", "random"):
        units = units_of(data, protocol)
        if not units:
            continue
        pairs = [("fgh", "baseline"), ("fg", "baseline"), ("fgh", "fg"), ("baseline", "audio only"), ("baseline", "visual only"),
                 ("fgh", "visual only")]  # fmt: skip
        for a, b in pairs:
            d = unit_paired(model_outcomes(units, a), model_outcomes(units, b))
            rows.append((protocol, f"{a} − {b}", d, (protocol, a, b) == PRIMARY))
    return rows


def pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def fmt_diff(d: dict) -> str:
    if d["n"] < 2:
        return f"{pct(d['mean'])} points (one unit: no interval)"
    return f"{pct(d['mean'])} points [{pct(d['low'])}, {pct(d['high'])}], {d['above']} up / {d['equal']} equal / {d['below']} down"


def report_markdown(data: dict, args) -> str:
    trained_on = data.get("trained_on", {})  # "part/foldF/seedS" -> the machine (the file may be finished on several)
    where = {m: sum(v == m for v in trained_on.values()) for m in dict.fromkeys(trained_on.values())}
    parts = [k for key, u in data["units"].items() for k in (key, *(f"semi{f}/{key.split('/', 1)[1]}" for f in u.get("semi", {})),
                                                              *(f"{p}/{key.split('/', 1)[1]}" for p in ("dropout", "late") if p in u))]  # fmt: skip
    unrecorded = sum(k not in trained_on for k in parts)
    machines = [f"{m} ({n} of the {len(parts)} parts of units)" for m, n in where.items()]
    machines += [f"not recorded for {unrecorded} (trained before the machine was kept)"] if unrecorded else []
    lines = ["# Real faces and voices: RAVDESS speech + action units, actors 1-12", "",
             f"Last written by `{' '.join([Path(sys.executable).name, *sys.argv])}`, {time.strftime('%Y-%m-%d %H:%M')}. "
             f"Trained on: {'; '.join(machines) or 'nothing yet'}.", "",
             f"Primary comparison (named before running): **{PRIMARY[1]} − {PRIMARY[2]}, {PRIMARY[0]}-disjoint protocol**, "
             f"unit: the actor; {UNIT_RULE}. Every other row is secondary.", ""]  # fmt: skip
    for protocol in ("actor", "random"):
        units = units_of(data, protocol)
        if not units:
            continue
        folds, seeds = sorted({u["fold"] for u in units}), sorted({u["seed"] for u in units})
        actors = sorted({o["actor"] for u in units for o in u["models"]["baseline"]["outcomes"]})
        lines += [f"## Protocol `{protocol}`: folds {folds}, seeds {seeds}, {len(units)} units, {len(actors)} actors tested", ""]
        lines += ["| model | accuracy (mean over actors) | 95 % interval | per fold (mean over seeds) | last epoch |", "| --- | --- | --- | --- | --- |"]
        for name in ("baseline", "audio only", "visual only", "fg", "fgh"):
            acc = unit_accuracy(model_outcomes(units, name))
            per_fold = " ".join(f"{100 * v:.1f}" for v in unit_accuracy(model_outcomes(units, name), "fold")["per_unit"].values())
            last = [u["models"][name]["last_epoch"] for u in units if u["models"][name]["last_epoch"] is not None]
            lines.append(f"| {name} | {100 * acc['mean']:.1f} % | [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}] | {per_fold} | "
                         f"{100 * np.mean(last):.1f} % |" if last else f"| {name} | {100 * acc['mean']:.1f} % | | {per_fold} | |")  # fmt: skip
        lines += ["", "| paired difference | actor-level mean and 95 % interval | per fold | per seed | same model as the baseline |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for proto, label, d, primary in comparisons(data):
            if proto != protocol:
                continue
            a, b = label.split(" − ")
            same = sum(u["models"][a]["digest"] == u["models"][b]["digest"] for u in units)
            mark = "**primary**" if primary else "secondary"
            lines.append(f"| {label} ({mark}) | {fmt_diff(d)} | {' '.join(pct(v) for v in d['per_fold'].values())} | "
                         f"{' '.join(pct(v) for v in d['per_seed'].values())} | {same} of {len(units)} |")  # fmt: skip
        picks = {m: {} for m in ("fg", "fgh")}
        for u in units:
            for m in picks:
                picks[m][u["lam"][m]] = picks[m].get(u["lam"][m], 0) + 1
        depths = {d: sum(u["depth"] == d for u in units) for d in DEPTHS}
        lines += ["", f"Chosen by validation in the {len(units)} units: fusion depth {', '.join(f'{d} layer(s) {n}x' for d, n in depths.items())}; "
                  + "; ".join(f"{m} λ " + ", ".join(f"{lam:g} {n}x" for lam, n in sorted(p.items())) for m, p in picks.items()), ""]  # fmt: skip
        grid_names = sorted({k for u in units for k in u["grid"]})
        lines += ["Every grid cell against the baseline of the unit's chosen depth (secondary):", "",
                  "| cell | accuracy | − chosen baseline |", "| --- | --- | --- |"]  # fmt: skip
        for g in grid_names:
            if not all(g in u["grid"] for u in units):
                continue
            cell = [o for u in units for o in u["grid"][g]]
            lines.append(f"| {g} | {100 * unit_accuracy(cell)['mean']:.1f} % | {fmt_diff(unit_paired(cell, model_outcomes(units, 'baseline')))} |")
        lines.append("")
    lines += gap_markdown(data)
    main = [u for u in units_of(data, "actor") if "missing" in u]
    if main:
        lines += [f"## Missing modality at test time (actor protocol, {len(main)} units, the models above, no retraining)", "",
                  "| missing | rate | baseline | fg | fgh | fgh − baseline | fg − baseline |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for cond in main[0]["missing"]["baseline"]:
            get = lambda n: [o for u in main for o in u["missing"][n][cond]]  # noqa: E731
            s, r = cond.split("@")
            accs = [f"{100 * unit_accuracy(get(n))['mean']:.1f} %" for n in ("baseline", "fg", "fgh")]
            lines.append(f"| {'action units' if s == 'visual' else s} | {r} | {' | '.join(accs)} | {fmt_diff(unit_paired(get('fgh'), get('baseline')))} | "
                         f"{fmt_diff(unit_paired(get('fg'), get('baseline')))} |")  # fmt: skip
        lines.append("")
    lines += dropout_markdown([u for u in units_of(data, "actor") if "dropout" in u])
    lines += late_markdown([u for u in units_of(data, "actor") if "late" in u])
    lines += semi_markdown([u for u in units_of(data, "actor") if u.get("semi")])
    secs = data.get("seconds", {})
    lines += ["CPU time of what was trained: " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in secs.items()) + ".", ""]
    return "\n".join(lines)


def semi_markdown(semi_units: list[dict]) -> list[str]:
    """The labelled-fraction table on the units that have every fraction (so a column compares the same
    actors), each fraction's models paired within it, the units' main models as the 100 % row."""
    fractions = sorted({f for u in semi_units for f in u["semi"]}, key=float)
    us = [u for u in semi_units if all(f in u["semi"] for f in fractions)]
    if not us:
        return []
    actors = len({o["actor"] for o in model_outcomes(us, "baseline")})
    lines = [f"## Semi-supervised (actor protocol, {len(us)} units, {actors} actors; the unit's chosen depth and λ)", "",
             "Each fraction trains a new stage 1 on the labelled recordings; fg's L_corr sees every training pair, h only the "
             "labelled ones. The 100 % row is the same units' models of the main comparison. Differences are paired per actor, "
             "with the 95 % t interval over actors.", ""]  # fmt: skip
    if len(us) < len(semi_units):
        lines += [f"{len(semi_units) - len(us)} unit(s) with only some of the fractions are left out until they have all.", ""]
    lines += ["| labelled | audio only | visual only | baseline | fg | fgh | fgh − baseline | fg − baseline | baseline − visual only "
              "| same model as the baseline (fg, fgh) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for f in [*fractions, None]:
        where = (lambda u: u["models"]) if f is None else (lambda u, f=f: u["semi"][f])
        get = lambda n: model_outcomes(us, n, where)  # noqa: E731
        accs = [f"{100 * unit_accuracy(get(n))['mean']:.1f} %" for n in ("audio only", "visual only", "baseline", "fg", "fgh")]
        same = ", ".join(str(sum(where(u)[m]["digest"] == where(u)["baseline"]["digest"] for u in us)) for m in ("fg", "fgh"))
        lines.append(f"| {'100' if f is None else f'{100 * float(f):.0f}'} % | {' | '.join(accs)} | "
                     f"{fmt_diff(unit_paired(get('fgh'), get('baseline')))} | {fmt_diff(unit_paired(get('fg'), get('baseline')))} | "
                     f"{fmt_diff(unit_paired(get('baseline'), get('visual only')))} | {same} of {len(us)} |")  # fmt: skip
    lines.append("")
    return lines


def protocol_gap(data: dict, name: str) -> dict | None:
    """The paper's random protocol − the actor-disjoint one for one model, on the recordings and seeds
    both tested (each tests every recording once per seed): per actor, how much easier a recording
    is when other takes of its actor were in training. None until both have a recording in common."""
    random_, actor = model_outcomes(units_of(data, "random"), name), model_outcomes(units_of(data, "actor"), name)
    both = {(o["seed"], o["video"]) for o in random_} & {(o["seed"], o["video"]) for o in actor}
    if not both:
        return None
    keep = lambda outcomes: [o for o in outcomes if (o["seed"], o["video"]) in both]  # noqa: E731
    return {"random": unit_accuracy(keep(random_)), "actor": unit_accuracy(keep(actor)), "gap": unit_paired(keep(random_), keep(actor)),
            "recordings": len(both)}  # fmt: skip


def gap_markdown(data: dict) -> list[str]:
    gaps = {name: protocol_gap(data, name) for name in ("baseline", "audio only", "visual only", "fg", "fgh")}
    if any(g is None for g in gaps.values()):
        return []
    n = gaps["baseline"]["recordings"]
    lines = [f"## The gap between the protocols (secondary; {n} recording × seed pairs tested under both)", "",
             "Each model of the random protocol against the same model of the actor-disjoint one, on the same recordings in the "
             "same seeds; the unit is the actor (the recording's, in both).", "",
             "| model | random protocol | actor-disjoint | random − actor |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name, g in gaps.items():
        lines.append(f"| {name} | {100 * g['random']['mean']:.1f} % | {100 * g['actor']['mean']:.1f} % | {fmt_diff(g['gap'])} |")
    return lines + [""]


DROPOUT_QUESTION = (DROPOUT_BASE, "audio only")


def dropout_outcomes(units: list[dict], name: str, cond: str | None = None, part: str = "dropout") -> list[dict]:
    """One model's test answers over the units in a part of its own (``dropout``, ``late``), or its
    answers in one missing-modality condition."""
    if cond is None:
        return model_outcomes(units, name, lambda u: u[part])
    return [o for u in units for o in u[part][name]["missing"][cond]]


def dropout_rows(units: list[dict]) -> list[tuple[str, str, str, dict, bool]]:
    """(model, other, label, unit_paired result, this part's question?) of the modality-dropout part, every
    model from the part's own stage 1: its baseline against audio alone first (the gap dropout is to close)."""
    if not units:
        return []
    pairs = [("baseline", "audio only")]
    for name in (n for n in units[0]["dropout"] if " md" in n):
        pairs += [(name, "baseline"), (name, "audio only")] + ([(name, DROPOUT_BASE)] if name.startswith("fgh") else [])
    return [(a, b, f"{a} − {b}", unit_paired(dropout_outcomes(units, a), dropout_outcomes(units, b)), (a, b) == DROPOUT_QUESTION)
            for a, b in pairs]  # fmt: skip


def follows(units: list[dict], name: str, part: str = "dropout") -> tuple[float, float]:
    """Over the actors, the correlation of a model's accuracy with the part's audio-only and
    action-unit-only accuracy (the same stage 1): which input a fused model leans on. NaN where
    there are fewer than three actors or one of them does not vary."""
    acc = lambda n: unit_accuracy(dropout_outcomes(units, n, part=part))["per_unit"]  # noqa: E731
    mine = acc(name)
    actors = sorted(mine)
    out = []
    for other in (acc("audio only"), acc("visual only")):
        x, y = np.array([mine[a] for a in actors]), np.array([other[a] for a in actors])
        out.append(float(np.corrcoef(x, y)[0, 1]) if len(actors) >= 3 and x.std() > 0 and y.std() > 0 else float("nan"))
    return out[0], out[1]


def dropout_markdown(units: list[dict]) -> list[str]:
    if not units:
        return []
    names = list(units[0]["dropout"])
    fused = [n for n in names if not n.endswith(" only")]
    # dropout against none, and the correlation loss on top of dropout, each with a modality missing
    missing_pairs = [(DROPOUT_BASE, "baseline")] + [(n, DROPOUT_BASE) for n in fused if n.startswith("fgh")]
    lines = [f"## Modality dropout (actor protocol, {len(units)} units; secondary: why the fused baseline is not above audio only)", "",
             "A stage 1 of the part's own per unit, and from it the baseline at the unit's depth, its audio-only and visual-only "
             "networks, the baseline trained again with a share of the training windows of the warm-up and stage 2 losing their "
             "audio or their action units, and fgh at the unit's λ from the 0.5 baseline's warm-up. The question named before "
             f"running: **{DROPOUT_QUESTION[0]} − {DROPOUT_QUESTION[1]}**.", "",
             "| model | accuracy (mean over actors) | over actors, its correlation with audio only | with action units only |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    r = lambda v: "–" if np.isnan(v) else f"{v:+.2f}"  # noqa: E731
    lines += [f"| {n} | {100 * unit_accuracy(dropout_outcomes(units, n))['mean']:.1f} % | "
              + (" | ".join(map(r, follows(units, n))) if n in fused else " | ") + " |" for n in names]  # fmt: skip
    lines += ["", "| paired difference | actor-level mean and 95 % interval | same weights as the other |", "| --- | --- | --- |"]
    for a, b, label, d, question in dropout_rows(units):
        same = sum(u["dropout"][a]["digest"] == u["dropout"][b]["digest"] for u in units)
        lines.append(f"| {label}{' (**question**)' if question else ''} | {fmt_diff(d)} | {same} of {len(units)} |")
    lines += ["", "The fused models with a modality missing at test time:", "",
              "| missing | rate | " + " | ".join(fused) + "".join(f" | {a} − {b}" for a, b in missing_pairs) + " |",
              "| --- | --- | " + " | ".join("---" for _ in fused) + " | ---" * len(missing_pairs) + " |"]  # fmt: skip
    for cond in units[0]["dropout"]["baseline"]["missing"]:
        s, r = cond.split("@")
        cells = [f"{100 * unit_accuracy(dropout_outcomes(units, n, cond))['mean']:.1f} %" for n in fused]
        cells += [fmt_diff(unit_paired(dropout_outcomes(units, a, cond), dropout_outcomes(units, b, cond))) for a, b in missing_pairs]
        lines.append(f"| {'action units' if s == 'visual' else s} | {r} | {' | '.join(cells)} |")
    return lines + [""]


LATE_QUESTION = ("product", "baseline")
LATE_FUSED = ("baseline", "fgh", "product", "product, val weight")


def late_rows(units: list[dict]) -> list[tuple[str, str, str, dict, bool]]:
    """(model, other, label, unit_paired result, this part's question?) of the late-fusion part, every
    model from the part's own stage 1: the product against the baseline first (the question)."""
    if not units:
        return []
    pairs = [LATE_QUESTION, ("product", "audio only"), ("product", "visual only"), ("product", "fgh"), ("fgh", "baseline"),
             ("baseline", "audio only"), ("product, val weight", "baseline"), ("product, val weight", "product")]  # fmt: skip
    get = lambda n: dropout_outcomes(units, n, part="late")  # noqa: E731
    return [(a, b, f"{a} − {b}", unit_paired(get(a), get(b)), (a, b) == LATE_QUESTION) for a, b in pairs]


def late_markdown(units: list[dict]) -> list[str]:
    if not units:
        return []
    get = lambda n, cond=None: dropout_outcomes(units, n, cond, part="late")  # noqa: E731
    lines = [f"## Late fusion (actor protocol, {len(units)} units; secondary: is the fusion network what makes the fused model "
             "follow the action units?)", "",
             "A stage 1 of the part's own per unit, and from it the baseline at the unit's depth, fgh at the unit's λ from the "
             "baseline's warm-up, the audio-only and visual-only networks, and their product of experts (per window p ∝ "
             "p_audio · p_visual where both inputs are there, else the one that is; nothing trained on top); beside it, the "
             f"product with the audio weight w (p ∝ p_audio^2w · p_visual^2(1−w)) chosen on the fold's validation actors among "
             f"{', '.join(f'{w:g}' for w in PRODUCT_WEIGHTS)}. The question named before running: "
             f"**{LATE_QUESTION[0]} − {LATE_QUESTION[1]}**.", "",
             "| model | accuracy (mean over actors) | 95 % interval | over actors, its correlation with audio only | with action units only |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    r = lambda v: "–" if np.isnan(v) else f"{v:+.2f}"  # noqa: E731
    for n in ("audio only", "visual only", *LATE_FUSED):
        acc = unit_accuracy(get(n))
        corr = " | ".join(map(r, follows(units, n, "late"))) if n in LATE_FUSED else " | "
        lines.append(f"| {n} | {100 * acc['mean']:.1f} % | [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}] | {corr} |")
    lines += ["", "| paired difference | actor-level mean and 95 % interval | per seed | same weights as the other |", "| --- | --- | --- | --- |"]
    for a, b, label, d, question in late_rows(units):
        trained = all("digest" in u["late"][n] for u in units for n in (a, b))
        same = f"{sum(u['late'][a]['digest'] == u['late'][b]['digest'] for u in units)} of {len(units)}" if trained else "–"
        lines.append(f"| {label}{' (**question**)' if question else ''} | {fmt_diff(d)} | "
                     f"{' '.join(pct(v) for v in d['per_seed'].values())} | {same} |")  # fmt: skip
    weights: dict[float, int] = {}
    for u in units:
        weights[u["late"]["product, val weight"]["weight"]] = weights.get(u["late"]["product, val weight"]["weight"], 0) + 1
    lines += ["", f"Audio weight chosen on validation in the {len(units)} units: "
              + ", ".join(f"{w:g} {n}x" for w, n in sorted(weights.items())) + ".", "",
              "The fused models with a modality missing at test time:", "",
              "| missing | rate | " + " | ".join(LATE_FUSED) + " | product − baseline | product − fgh |",
              "| --- | --- | " + " | ".join("---" for _ in LATE_FUSED) + " | --- | --- |"]  # fmt: skip
    for cond in units[0]["late"]["baseline"]["missing"]:
        s, rate = cond.split("@")
        cells = [f"{100 * unit_accuracy(get(n, cond))['mean']:.1f} %" for n in LATE_FUSED]
        cells += [fmt_diff(unit_paired(get("product", cond), get(b, cond))) for b in ("baseline", "fgh")]
        lines.append(f"| {'action units' if s == 'visual' else s} | {rate} | {' | '.join(cells)} |")
    return lines + [""]


def forest_png(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparisons(data)
    for f in ("0.1", "0.25", "0.5"):
        us = [u for u in units_of(data, "actor") if f in u.get("semi", {})]
        if us:
            get = lambda n: [o for u in us for o in u["semi"][f][n]["outcomes"]]  # noqa: E731
            rows += [("semi", f"{m} − baseline, {100 * float(f):.0f} % labelled", unit_paired(get(m), get("baseline")), False) for m in ("fg", "fgh")]
    rows += [("dropout", label, d, False) for _, _, label, d, _ in dropout_rows([u for u in units_of(data, "actor") if "dropout" in u])]
    rows += [("late", label, d, False) for _, _, label, d, _ in late_rows([u for u in units_of(data, "actor") if "late" in u])]
    rows += [("gap", f"{name}: random − actor protocol", g["gap"], False) for name in ("baseline", "fgh")
             if (g := protocol_gap(data, name)) is not None]  # fmt: skip
    main = [u for u in units_of(data, "actor") if "missing" in u]
    for cond in (main[0]["missing"]["baseline"] if main else []):
        get = lambda n: [o for u in main for o in u["missing"][n][cond]]  # noqa: E731
        s, r = cond.split("@")
        rows.append(("missing", f"fgh − baseline, {'AUs' if s == 'visual' else s} gone in {100 * float(r):.0f} %", unit_paired(get("fgh"), get("baseline")), False))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.2))
    for i, (protocol, label, d, primary) in enumerate(rows[::-1]):
        color = "C3" if primary else "C0"
        ax.plot([100 * d["low"], 100 * d["high"]], [i, i], color=color, lw=2.5 if primary else 1.5)
        ax.plot(100 * d["mean"], i, "o", color=color, ms=7 if primary else 5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{p}: {l}" + ("  (primary)" if pr else "") for p, l, _, pr in rows[::-1]], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("paired difference, accuracy points\n(mean over actors, 95 % t interval over actors)")
    ax.set_title("RAVDESS speech + action units, actors 1-12", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speech", type=Path, required=True, help="RAVDESS speech folder (Actor_01 ...)")
    ap.add_argument("--au", type=Path, required=True, help="the action units (ravdess_au/ or its CSV)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/real_av"), help="the cache and the runs (large; resumable)")
    ap.add_argument("--results", type=Path, default=None, help="results.json, results.md, forest.png (small; commit them); "
                    "default docs/results/real_av, with --smoke OUT/results")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    ap.add_argument("--folds", type=lambda s: [int(x) for x in s.split(",")], default=list(range(6)))
    ap.add_argument("--parts", default="main,missing,random,semi", help="in order of priority: main, missing, random, semi; "
                    "and dropout and late (secondary)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--retrain-for-missing", action="store_true", help="a unit recorded without its missing-modality sweep whose models "
                    "are not under --out: train it again (its record is replaced) rather than skip the sweep")
    ap.add_argument("--smoke", action="store_true", help="every code path in minutes: 1 epoch per stage, 2 windows (--out elsewhere)")
    args = ap.parse_args()
    args.results = args.results or (args.out / "results" if args.smoke else Path("docs/results/real_av"))
    args.extra = dict(epochs=1, joint_epochs=1, windows_per_epoch=2, joint_windows=1, val_windows=2) if args.smoke else {}
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    unknown = set(parts) - {"main", "missing", "random", "semi", "dropout", "late"}
    if unknown:
        ap.error(f"--parts: {', '.join(sorted(unknown))} is not one of main, missing, random, semi, dropout, late")
    bench = Bench(args, make_cache(args))
    steps = []
    for seed in args.seeds:  # the main protocol over every fold first: every actor tested once
        for f in args.folds:  # a unit's missing-modality sweep right after it: its models are on disk now
            steps += [("main", f, seed)] if "main" in parts else []
            steps += [("missing", f, seed)] if "missing" in parts else []
        for f in args.folds:  # then the paper's protocol and the labelled fractions, fold by fold
            steps += [("random", f, seed)] if "random" in parts else []
            steps += [("semi", f, seed)] if "semi" in parts else []
        for f in args.folds:  # the secondary parts last (they need the unit's depth and λ)
            steps += [("dropout", f, seed)] if "dropout" in parts else []
            steps += [("late", f, seed)] if "late" in parts else []
    for what, fold, seed in steps:
        t0 = time.time()
        if what == "main":
            bench.unit("actor", fold, seed)
        elif what == "random":
            bench.unit("random", fold, seed)
        elif what == "missing":
            bench.missing(fold, seed)
        elif what == "dropout":
            bench.dropout(fold, seed)
        elif what == "late":
            bench.late(fold, seed)
        else:
            for fraction in FRACTIONS:
                bench.semi(fold, seed, fraction)
                bench.save()
        bench.save()
        print(f"{what} fold {fold} seed {seed}: {time.time() - t0:.0f} s  [{(time.time() - bench.t0) / 60:.0f} min]", flush=True)
    print((args.results / "results.md").read_text())


if __name__ == "__main__":
    main()
