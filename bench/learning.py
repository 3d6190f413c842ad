"""Does it learn? Test accuracy of every model over several seeds, side by side, in one run.

    .venv/bin/python bench/learning.py                       # demo corpus: 5 models x 3 seeds (~25 min on 2 CPU cores)
    .venv/bin/python bench/learning.py --compare             # + the joint-stage variants, paper recipe vs ours
    .venv/bin/python bench/learning.py --ravdess ../shared/data/ravdess_speech --folds 0,1,2   # real speech, audio only
    .venv/bin/python bench/learning.py --skip-demo --cache build/ravdess_speech/cache --folds 0 --set spec_augment=false   # one part off

Part 1, the demo corpus (``avhgr.demo``: face and voice each show the class on 70 % of the
videos, together on all): audio-only, visual-only, baseline (CE only), fg and fgh, each seed
with its own random split; stage 1 is trained once per seed (the baseline run) and shared. It
prints mean ± std test video accuracy per model, and for the joint models L_corr at the first
joint step and the validation accuracy after the first joint epoch beside stage 1's best, and
the time. ``--compare`` adds fg and fgh under each joint-stage variant (the paper's literal
recipe, feature standardisation, function-preserving rescale, λ warm-up, lower stage-2 rate).

Part 2 (``--ravdess``), RAVDESS speech, six classes, audio only, actor-disjoint: one run per
fold of a 6-fold leave-two-actors-out split of the 12 actors (two test actors, two validation
actors, eight training actors per fold); prints each fold's test accuracy, mean ± std, and the
time per epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from avhgr.datasets import index_dataset, select_emotions
from avhgr.features import FeatureSettings
from avhgr.preprocess import default_workers, run_preprocess
from avhgr.train import TrainConfig, train

QUIET = lambda *a, **k: None  # noqa: E731


def demo_cache(out: Path, per_class: int) -> Path:
    from avhgr.demo import FRAME_SIZE, build_corpus

    manifest = build_corpus(out / "corpus", per_class)
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    settings = FeatureSettings(windows=10, face_size=64, detect_size=FRAME_SIZE[1], min_face=30)
    run_preprocess(videos, classes, out / "cache", settings, manifest, "csv", workers=default_workers(), progress=False)
    return out / "cache"


def metrics_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def fmt(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():5.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:4.1f}"


def demo_part(args) -> None:
    cache = demo_cache(args.out, args.per_class)
    seeds = list(range(args.seeds))
    from avhgr.distributed import fast_amp

    amp = args.amp if args.amp is not None else fast_amp("cpu")  # as make demo
    print(f"demo corpus, ResNet-18, {'bf16 autocast' if amp else 'float32'} on the CPU", flush=True)
    common = dict(cache=str(cache), backbone="resnet18", batch_size=32, epochs=args.epochs, device="cpu", amp=amp)
    # The baseline first: it trains the seed's stage 1, which the others start from.
    models = [("baseline", dict(corr="none")), ("audio only", dict(modalities=("audio",))), ("visual only", dict(modalities=("visual",))),
              ("fg", dict(corr="fg")), ("fgh", dict(corr="fgh"))]  # fmt: skip
    # (name, settings, whether it trains all five models or only fg and fgh on the recipe's stage 1)
    variants = [("avhgr recipe (default)", {}, True)]
    if args.compare:
        variants = [
            ("paper recipe", dict(recipe="paper"), True),
            *variants,
            ("avhgr, feature_norm none", dict(feature_norm="none"), False),
            ("avhgr, feature_norm rescale", dict(feature_norm="rescale"), False),
            ("avhgr, none + λ warm-up 2", dict(feature_norm="none", lam_warmup=2), False),
            ("avhgr, none + stage-2 lr 1e-4", dict(feature_norm="none", stage2_lr=1e-4), False),
        ]
    runs = args.out / "runs" / ("bf16" if amp else "fp32")  # a resumed run keeps its precision: never mix them
    table = []
    for variant, extra, every_model in variants:
        recipe = extra.get("recipe", "avhgr")
        results: dict[str, list] = {name: [] for name, _ in models}
        first: dict[str, list] = {"fg": [], "fgh": []}
        t0 = time.time()
        for seed in seeds:
            base = runs / recipe / f"seed{seed}" / "baseline"
            for name, model_kw in models:
                if not every_model and name not in ("fg", "fgh"):
                    continue
                folder = base if name == "baseline" else runs / recipe / f"seed{seed}" / (name.replace(" ", "_") + _tag(extra))
                kw = {**common, **model_kw, "seed": seed, "pretrain_epochs": args.epochs, "recipe": recipe,
                      **{k: v for k, v in extra.items() if k != "recipe"}}  # fmt: skip
                if name != "baseline":
                    kw["init_from"] = str(base)
                report = train(TrainConfig(out=str(folder), **kw), resume=True, log=QUIET)
                results[name].append(report["video_accuracy"])
                if name in first:
                    rows = metrics_rows(folder)
                    stage1 = min(float(max(float(r["val_video_acc"]) for r in metrics_rows(base) if r["stage"] == f"stage1_{m}"))
                                 for m in ("audio", "visual"))  # fmt: skip
                    first_val = float([r for r in rows if r["stage"] == "stage2"][0]["val_video_acc"])
                    first[name].append((report["stages"]["stage2"]["first_step_corr"], first_val, stage1))
        minutes = (time.time() - t0) / 60
        for name, accs in results.items():
            if not accs:
                continue
            line = f"{variant:30s} {name:12s} {fmt(accs)} %  per seed {' '.join(f'{100 * a:5.1f}' for a in accs)}"
            if name in first:
                fc = [f[0] for f in first[name]]
                line += f"  first-step L_corr {' '.join(f'{c:+.2f}' for c in fc)}  val after joint epoch 1 vs stage 1's best: "
                line += " ".join(f"{100 * v:.0f}/{100 * s1:.0f}" for _, v, s1 in first[name])
            table.append(line)
            print(line, flush=True)
        print(f"{variant}: {minutes:.1f} min", flush=True)
    (args.out / "learning_demo.txt").write_text("\n".join(table) + "\n")


def _tag(extra: dict) -> str:
    return "".join(f"_{k}{v}" for k, v in sorted(extra.items()) if k != "recipe")


def ravdess_part(args) -> None:
    cache = args.cache or args.out / "ravdess_cache"
    if not args.cache:
        videos, classes = select_emotions(index_dataset("ravdess", args.ravdess), "basic6")
        run_preprocess(videos, classes, cache, FeatureSettings(windows=args.windows), args.ravdess, "ravdess",
                       workers=default_workers(), progress=False)  # fmt: skip
    from avhgr.distributed import fast_amp

    amp = args.amp if args.amp is not None else fast_amp(args.device)  # as the built-in model's build
    accs, per_epoch = [], []
    for fold in args.folds:
        out = args.out / "ravdess_runs" / f"{args.recipe}_{args.backbone}_{'bf16' if amp else 'fp32'}{_tag(args.set)}_fold{fold}"
        cfg = TrainConfig(cache=str(cache), out=str(out), modalities=("audio",), split="actor", fold=fold, backbone=args.backbone,
                          epochs=args.ravdess_epochs, batch_size=args.batch_size, recipe=args.recipe, device=args.device,
                          amp=amp, windows_per_epoch=args.windows_per_epoch or None, **args.set)  # fmt: skip
        report = train(cfg, resume=True, log=print if args.verbose else QUIET)
        rows = metrics_rows(out)
        per_epoch.append(float(np.mean([float(r["seconds"]) for r in rows])))
        split = json.loads((out / "split.json").read_text())
        actors = sorted({Path(e["path"]).parent.name for e in split["test"]})
        accs.append(report["video_accuracy"])
        print(f"fold {fold} (test {', '.join(actors)}): test video accuracy {100 * report['video_accuracy']:.1f} % "
              f"on {report['videos']} files, best epoch {report['stages']['stage1_audio']['best_epoch']}, "
              f"{per_epoch[-1]:.0f} s per epoch", flush=True)  # fmt: skip
    print(f"RAVDESS speech, audio only, 6 classes, actor-disjoint, {args.backbone}, recipe {args.recipe}"
          f"{''.join(f', {k}={v}' for k, v in args.set.items())}: "
          f"{fmt(accs)} % over folds {args.folds}; {np.mean(per_epoch):.0f} s per epoch (train + validation)")


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
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6, help="demo: epochs of each stage")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--compare", action="store_true", help="demo: the joint-stage variants side by side")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--ravdess", type=Path, default=None, help="RAVDESS speech folder (Actor_01 ...): run part 2")
    ap.add_argument("--cache", type=Path, default=None, help="part 2: an existing RAVDESS cache")
    ap.add_argument("--windows", type=int, default=60, help="part 2: windows cached per file (the pool each epoch draws from)")
    ap.add_argument("--windows-per-epoch", type=int, default=10, help="part 2: windows drawn per file each epoch (0: the recipe's)")
    ap.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="part 2: one training setting changed from the recipe (e.g. spec_augment=false, weight_decay=0, "
                         "schedule=constant); repeatable; the runs go to their own folders")
    ap.add_argument("--folds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--ravdess-epochs", type=int, default=25, help="part 2 (as the built-in model's build)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
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
    if args.ravdess or args.cache:
        ravdess_part(args)


if __name__ == "__main__":
    main()
