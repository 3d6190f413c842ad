"""Does it learn, and does Soft-HGR help? Every model over seeds, paired, in one run.

    .venv/bin/python bench/learning.py                          # demo corpus: 5 models x 5 seeds, paired differences
    .venv/bin/python bench/learning.py --grid                   # + fg and fgh at λ 0.01, 0.1, 1 with 1 and 2 fusion layers
    .venv/bin/python bench/learning.py --skip-demo --ravdess ../shared/data/ravdess_speech --folds 0,1,2   # real speech, audio only
    .venv/bin/python bench/learning.py --skip-demo --cache build/ravdess_speech/cache --folds 0 --set spec_augment=false   # one part off

Part 1, the demo corpus (``avhgr.demo.DEMO_CORPUS``, where no fused model saturates): in each
seed (its own random split) the baseline run trains stage 1 and every other model starts from
it (audio only and visual only are its two networks; fg and fgh take the same stage 1, the same
fusion warm-up and, epoch by epoch, the same batches and augmentation draws), so the methods are
paired by seed. It prints mean ± std test video accuracy per model at the kept (best-validation)
epoch and at the last epoch, the per-seed table, the paired differences fg − baseline and
fgh − baseline with their 95 % t interval over seeds, the stage-2 epoch each kept, and whether a
method ended up keeping the same model as the baseline (identical weights). ``--grid`` adds the
paper's λ ∈ {0.01, 0.1, 1} at 1 and 2 fusion layers, each against the baseline of its depth.

Part 2 (``--ravdess``), RAVDESS speech, six classes, audio only, actor-disjoint: one run per
fold of a 6-fold leave-two-actors-out split of the 12 actors (two test actors, two validation
actors, eight training actors per fold); prints each fold's test accuracy, mean ± std, and the
time per epoch.

Part 3 (``--ravdess-au DIR --ravdess SPEECH``), real faces and voices: the speech recordings with
the facial action units of the same takes (OpenFace, one vector per recording) as the visual
input; per fold and seed the baseline trains stage 1 (a ResNet on spectrograms, an MLP on the
action units) and audio only, visual only, fg and fgh start from it, paired as in part 1.
``--au-lams`` adds other λ and picks λ per fold and seed by validation.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from avhgr.datasets import index_dataset, select_emotions
from avhgr.features import FeatureSettings
from avhgr.preprocess import default_workers, run_preprocess
from avhgr.runs import weights_digest
from avhgr.stats import format_difference, mean_std, paired_difference
from avhgr.train import TrainConfig, train_owned

QUIET = lambda *a, **k: None  # noqa: E731


def demo_cache(out: Path, per_class: int) -> Path:
    from avhgr.demo import DEMO_CORPUS, corpus_and_cache

    corpus_and_cache(out, replace(DEMO_CORPUS, per_class=per_class), progress=False)  # another corpus: its runs go too
    return out / "cache"


def accuracy_table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: per model, mean ± std test video accuracy at the kept and the last epoch, per seed."""
    lines = ["| model | test video accuracy (kept epoch) | last epoch | per seed (kept) | stage-2 epoch kept per seed |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, rows in results.items():
        kept = [r["video_accuracy"] for r in rows]
        last = [r["last_epoch"] for r in rows]
        epochs = " ".join(str(r["best_epoch"]) for r in rows if r["best_epoch"] is not None)
        lines.append(f"| {name} | {mean_std(kept, 1)} % | {mean_std(last, 1)} % | {' '.join(f'{100 * a:.1f}' for a in kept)} | {epochs} |")
    return lines


def difference_table(results: dict[str, list[dict]], baseline: str, methods: list[str]) -> list[str]:
    """Markdown lines: each method − ``baseline`` per seed, mean and 95 % interval, at the kept and
    the last epoch, and in how many seeds the method kept the very model the baseline kept."""
    lines = ["| difference | kept epoch | last epoch | seeds where it kept the baseline's model |", "| --- | --- | --- | --- |"]
    base = results[baseline]
    for name in methods:
        rows = results[name]
        d_kept = paired_difference([r["video_accuracy"] for r in rows], [r["video_accuracy"] for r in base])
        d_last = paired_difference([r["last_epoch"] for r in rows], [r["last_epoch"] for r in base])
        same = sum(r["digest"] == b["digest"] for r, b in zip(rows, base))
        lines.append(f"| {name} − {baseline} | {format_difference(d_kept)} | {format_difference(d_last)} | {same} of {len(rows)} |")
    return lines


def outcome(report: dict, folder: Path) -> dict:
    stage2 = report["stages"].get("stage2", {})
    return {"video_accuracy": report["video_accuracy"], "last_epoch": (report.get("last_epoch") or {}).get("video_accuracy"),
            "best_epoch": stage2.get("best_epoch"), "first_step_corr": stage2.get("first_step_corr"),
            "digest": weights_digest(folder / "model.safetensors")}  # fmt: skip


def demo_part(args) -> None:
    from avhgr.precision import default_amp

    t0 = time.time()
    cache = demo_cache(args.out, args.per_class)
    seeds = list(range(args.seeds))
    amp = args.amp if args.amp is not None else default_amp("cpu")  # as make demo
    precision = "bf16" if amp else "fp32"
    common = dict(cache=str(cache), backbone="resnet18", batch_size=32, epochs=args.epochs, joint_epochs=args.epochs, device="cpu",
                  amp=amp)  # fmt: skip
    models = [("baseline", dict(corr="none")), ("audio only", dict(modalities=("audio",))), ("visual only", dict(modalities=("visual",))),
              ("fg", dict(corr="fg")), ("fgh", dict(corr="fgh"))]  # fmt: skip
    grid = []
    if args.grid:
        for layers in (1, 2):
            if layers != 2:
                grid.append((f"baseline, {layers} layer", dict(corr="none", fusion_layers=layers)))
            for method in ("fg", "fgh"):
                for lam in (0.01, 0.1, 1.0):
                    if (layers, lam) != (2, 1.0):  # the default, above
                        grid.append((f"{method} λ={lam:g}, {layers} layer{'s' if layers > 1 else ''}", dict(corr=method, lam=lam, fusion_layers=layers)))
    results: dict[str, list[dict]] = {name: [] for name, _ in models + grid}
    for seed in seeds:
        base = args.out / "runs" / precision / f"seed{seed}" / "baseline"
        for name, kw in models + grid:
            folder = base if name == "baseline" else base.parent / name.replace(" ", "_").replace(",", "").replace("=", "")
            init = {} if name == "baseline" else dict(init_from=str(base))
            report = train_owned(TrainConfig(out=str(folder), seed=seed, **common, **kw, **init), log=QUIET)
            results[name].append(outcome(report, folder))
        print(f"seed {seed}: " + "  ".join(f"{n} {100 * results[n][-1]['video_accuracy']:.1f}" for n, _ in models)
              + f"  [{(time.time() - t0) / 60:.1f} min]", flush=True)  # fmt: skip
    lines = [f"Demo corpus ({args.per_class} videos per class), ResNet-18, {args.epochs} epochs per stage after a one-epoch fusion "
             f"warm-up, {precision} on the CPU, seeds {seeds[0]}–{seeds[-1]}, {(time.time() - t0) / 60:.1f} min", ""]  # fmt: skip
    lines += accuracy_table({n: results[n] for n, _ in models})
    lines += ["", f"Paired differences over seeds {seeds[0]}–{seeds[-1]} (in each seed the same stage 1, warm-up and batches):", ""]
    lines += difference_table(results, "baseline", ["fg", "fgh"])
    if grid:
        lines += ["", "λ and fusion depth (the paper's grid), each against the baseline of its depth:", ""]
        lines += accuracy_table({n: results[n] for n, _ in grid}) + [""]
        for layers in (1, 2):
            names = [n for n, kw in grid if kw.get("fusion_layers") == layers and kw["corr"] != "none"]
            lines += difference_table(results, "baseline" if layers == 2 else f"baseline, {layers} layer", names) + [""]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    (args.out / f"learning_demo_{precision}.md").write_text(text)
    (args.out / f"learning_demo_{precision}.json").write_text(json.dumps(results, indent=1))


def _tag(settings: dict) -> str:
    return "".join(f"_{k}{v}" for k, v in sorted(settings.items()))


def ravdess_part(args) -> None:
    cache = args.cache or args.out / "ravdess_cache"
    if not args.cache:
        videos, classes = select_emotions(index_dataset("ravdess", args.ravdess), "basic6")
        run_preprocess(videos, classes, cache, FeatureSettings(windows=args.windows), args.ravdess, "ravdess",
                       workers=default_workers(), progress=False)  # fmt: skip
    from avhgr.precision import default_amp

    amp = args.amp if args.amp is not None else default_amp(args.device)  # as the built-in model's build
    accs, per_epoch = [], []
    for fold in args.folds:
        out = args.out / "ravdess_runs" / f"{args.recipe}_{args.backbone}_{'bf16' if amp else 'fp32'}{_tag(args.set)}_fold{fold}"
        cfg = TrainConfig(cache=str(cache), out=str(out), modalities=("audio",), split="actor", fold=fold, backbone=args.backbone,
                          epochs=args.ravdess_epochs, recipe=args.recipe, device=args.device, amp=amp, **args.set)  # fmt: skip
        report = train_owned(cfg, log=print if args.verbose else QUIET)
        rows = (out / "metrics.csv").read_text().splitlines()[1:]
        per_epoch.append(float(np.median([float(r.split(",")[-1]) for r in rows])))
        split = json.loads((out / "split.json").read_text())
        actors = sorted({Path(e["path"]).parent.name for e in split["test"]})
        accs.append(report["video_accuracy"])
        print(f"fold {fold} (test {', '.join(actors)}): test video accuracy {100 * report['video_accuracy']:.1f} % "
              f"on {report['videos']} files (last epoch {100 * report['last_epoch']['video_accuracy']:.1f} %), "
              f"best epoch {report['stages']['stage1_audio']['best_epoch']}, {per_epoch[-1]:.0f} s per epoch", flush=True)  # fmt: skip
    print(f"RAVDESS speech, audio only, 6 classes, actor-disjoint, {args.backbone}, recipe {args.recipe}"
          f"{''.join(f', {k}={v}' for k, v in args.set.items())}: "
          f"{mean_std(accs, 1)} % over folds {args.folds}; median {np.median(per_epoch):.0f} s per epoch (train + validation)")


def ravdess_au_part(args) -> None:
    """Real faces and voices: RAVDESS speech (actors 1-12, six classes) with the facial action units
    of the same takes as the visual input, actor-disjoint folds x seeds, every model paired."""
    from avhgr.precision import default_amp
    from avhgr.visual_features import open_table

    t0 = time.time()
    table = args.ravdess_au / "ravdess_au_actors_01-12.csv" if args.ravdess_au.is_dir() else args.ravdess_au
    videos, classes = select_emotions(index_dataset("ravdess", args.ravdess), "basic6")
    cache = args.out / "ravdess_au_cache"
    run_preprocess(videos, classes, cache, FeatureSettings(windows=args.windows), args.ravdess, "ravdess", workers=default_workers(),
                   progress=False, features=open_table(table))  # fmt: skip
    amp = args.amp if args.amp is not None else default_amp(args.device)
    precision = "bf16" if amp else "fp32"
    common = dict(cache=str(cache), split="actor", backbone=args.backbone, epochs=args.ravdess_epochs, joint_epochs=args.joint_epochs,
                  device=args.device, amp=amp, **args.set)  # fmt: skip
    models = [("baseline", dict(corr="none")), ("audio only", dict(modalities=("audio",))), ("visual only (AUs)", dict(modalities=("visual",))),
              ("fg", dict(corr="fg")), ("fgh", dict(corr="fgh"))]  # fmt: skip
    grid = [(f"{m} λ={lam:g}", dict(corr=m, lam=lam)) for m in ("fg", "fgh") for lam in args.au_lams if lam != 1.0]
    results: dict[str, list[dict]] = {name: [] for name, _ in models + grid}
    pairs = [(fold, seed) for seed in range(args.seeds) for fold in args.folds]
    for done, (fold, seed) in enumerate(pairs, 1):
        base = args.out / "ravdess_au_runs" / precision / f"seed{seed}_fold{fold}" / "baseline"
        for name, kw in models + grid:
            folder = base if name == "baseline" else base.parent / name.split(" (")[0].replace(" ", "_").replace("=", "")
            init = {} if name == "baseline" else dict(init_from=str(base))
            report = train_owned(TrainConfig(out=str(folder), fold=fold, seed=seed, **common, **kw, **init), log=QUIET)
            results[name].append(outcome(report, folder) | {"val": report["stages"].get("stage2", {}).get("best_val_video_accuracy")})
        print(f"fold {fold} seed {seed}: " + "  ".join(f"{n} {100 * results[n][-1]['video_accuracy']:.1f}" for n, _ in models)
              + f"  [{(time.time() - t0) / 60:.1f} min]", flush=True)  # fmt: skip
        # After every pair, so that a run cut short still leaves the table of the pairs it finished.
        write_au_tables(args, results, models, grid, pairs[:done], precision, time.time() - t0, final=done == len(pairs),
                        recipe=TrainConfig(out="", fold=0, **common))  # fmt: skip


def write_au_tables(args, results, models, grid, pairs, precision: str, seconds: float, final: bool, recipe: TrainConfig) -> None:
    described = ", ".join(f"fold {f} seed {s}" for f, s in pairs)
    lines = [f"RAVDESS speech + facial action units, actors 1-12, six classes, actor-disjoint (6-fold leave-two-actors-out; "
             f"{len(pairs)} fold x seed pairs: {described}), {args.backbone} on spectrograms, an MLP on the 35 action units, "
             f"{args.windows} windows cached per recording, {recipe.windows_per_epoch} per epoch, batch {recipe.batch_size}, "
             f"feature noise {recipe.feature_noise}, stage 1 {args.ravdess_epochs} epochs, stage 2 {args.joint_epochs} after a "
             f"one-epoch fusion warm-up, recipe {recipe.recipe} with {dict(args.set) or 'no changes'}, {precision}, {seconds / 60:.0f} min"
             + ("" if final else " (cut short: the pairs so far)"), ""]  # fmt: skip
    lines += accuracy_table({n: results[n] for n, _ in models})
    lines += ["", "Paired differences over the fold x seed pairs (in each the same stage 1, warm-up and batches):", ""]
    lines += difference_table(results, "baseline", ["fg", "fgh", "audio only"])
    chosen: dict[str, list[dict]] = {}  # λ picked per pair by validation
    if grid:
        lines += ["", f"λ for fg and fgh (the paper's values {', '.join(f'{x:g}' for x in args.au_lams)}), against the baseline:", ""]
        lines += accuracy_table({n: results[n] for n, _ in grid}) + [""]
        lines += difference_table(results, "baseline", [n for n, _ in grid])
        lam_of = {"fg": 1.0, "fgh": 1.0, **{n: kw["lam"] for n, kw in grid}}
        for method in ("fg", "fgh"):  # λ chosen per pair by validation, never by test
            names = [method] + [n for n, kw in grid if kw["corr"] == method]
            picks = [max(names, key=lambda n: (results[n][i]["val"], -abs(np.log10(lam_of[n])))) for i in range(len(pairs))]
            chosen[f"{method}, λ by validation"] = [results[n][i] for i, n in enumerate(picks)]
        lines += ["", "λ chosen per fold and seed by stage 2's validation accuracy (ties: the λ nearest 1):", ""]
        lines += difference_table(results | chosen, "baseline", list(chosen))
    text = "\n".join(lines) + "\n"
    if final:
        print(text, flush=True)
    (args.out / f"learning_ravdess_au_{precision}.md").write_text(text)
    (args.out / f"learning_ravdess_au_{precision}.json").write_text(json.dumps({"pairs": pairs, **results, **chosen}, indent=1))


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value), the value read as JSON where it is one (false, 0, 1e-4), else a string."""
    from dataclasses import fields

    key, _, value = text.partition("=")
    if key not in {f.name for f in fields(TrainConfig)}:
        raise argparse.ArgumentTypeError(f"{key!r} is not a training setting (TrainConfig field)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench_out/learning"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6, help="demo: epochs of each stage (stage 2's after its warm-up)")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--grid", action="store_true", help="demo: fg and fgh at the paper's λ 0.01, 0.1, 1 with 1 and 2 fusion layers")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--ravdess", type=Path, default=None, help="RAVDESS speech folder (Actor_01 ...): run part 2")
    ap.add_argument("--cache", type=Path, default=None, help="part 2: an existing RAVDESS cache")
    ap.add_argument("--windows", type=int, default=60, help="part 2: windows cached per file (the pool each epoch draws from)")
    ap.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="part 2: one training setting changed from the recipe (e.g. spec_augment=false, weight_decay=0, "
                         "schedule=constant, windows_per_epoch=10, batch_size=64); repeatable; the runs go to their own folders")
    ap.add_argument("--folds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--ravdess-epochs", type=int, default=12, help="part 2: epochs (a user's first run); part 3: stage-1 epochs")
    ap.add_argument("--ravdess-au", type=Path, default=None, help="part 3: the RAVDESS action units (ravdess_au/ or its CSV), with --ravdess")
    ap.add_argument("--joint-epochs", type=int, default=4, help="part 3: stage-2 epochs after the warm-up")
    ap.add_argument("--au-lams", type=lambda s: [float(x) for x in s.split(",")], default=[1.0], help="part 3: λ values for fg and fgh")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--recipe", default="avhgr")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on CUDA and on CPUs with native bf16, as make demo and make model)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.set = dict(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_demo:
        demo_part(args)
    if args.ravdess_au:
        if not args.ravdess:
            ap.error("--ravdess-au needs --ravdess (the speech recordings whose faces the action units describe)")
        ravdess_au_part(args)
    elif args.ravdess or args.cache:
        ravdess_part(args)


if __name__ == "__main__":
    main()
