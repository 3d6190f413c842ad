"""Build the built-in speech model and its model card from RAVDESS speech (``make model``).

    python -m avhgr.builtin.build --data ../shared/data/ravdess_speech

1. preprocess the speech recordings (audio only, the six basic emotions, 60 windows per file:
   the pool each epoch draws from) into ``build/ravdess_speech/cache``;
2. leave-actors-out cross-validation inside the data's actors: 6 folds, each testing on 2 actors,
   validating on 2 others and training on the remaining 8;
3. the final model on every actor (``--split all``: no validation, the last epoch kept);
4. into ``src/avhgr/builtin/speech/``: the weights as float16 safetensors, ``model.json``,
   ``cv.json`` (every figure of the card), ``confusion.png`` and ``MODEL_CARD.md``, written from
   cv.json (no figure typed by hand).

Runs are resumable (rerun the command after an interruption); finished folds are read back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from ..cache import atomic_write_text
from ..datasets import index_dataset, select_emotions
from ..features import FeatureSettings
from ..precision import describe_machine
from ..preprocess import default_workers, run_preprocess
from ..config import STAGE1_SETTINGS, TrainConfig, upgrade
from ..train import train_owned
from . import SPEECH

# The build sets only what a shipped speech model needs; every other setting is `avhgr train`'s
# default (one recipe: TrainConfig and its RECIPES), and the card lists these with their reasons.
SETTINGS = dict(modalities=("audio",))
WHY = {
    "modalities": "the voice expert of the built-in model (its face expert is fer's network, see ../MODEL_CARD.md)",
}
FOLDS = 6


# What a user's `avhgr train` and `avhgr preprocess` choose that a model's training depends on (the
# stage-1 settings, less which videos train and the precision, which depends on the machine).
COMPARED = ("modalities", "recipe", *(k for k in STAGE1_SETTINGS if k not in ("seed", "split", "fold", "folds", "fold_partition",
                                                                              "labeled_fraction", "amp")))  # fmt: skip


def differences_from_defaults(config: dict, features: dict) -> dict:
    """The settings of a build (its config.json and cache features) that are not what `avhgr train`
    and `avhgr preprocess` choose by default today, with why where the build chose them."""
    config = upgrade(config)
    defaults = TrainConfig(cache="", out="", device=config.get("device", "auto"), modalities=tuple(config["modalities"])).to_json()
    out = {k: {"build": config.get(k), "default": defaults[k], "why": WHY.get(k, "")} for k in COMPARED if config.get(k) != defaults[k]}
    if features.get("windows") != FeatureSettings().windows:
        out["windows (preprocess)"] = {"build": features.get("windows"), "default": FeatureSettings().windows, "why": WHY.get("windows", "")}
    return out


def build(data: Path, work: Path, out: Path, amp: bool | None, device: str, log=print) -> dict:
    t0, commit = time.time(), _commit()  # the code this build runs, not what is checked out when it ends
    videos, classes = select_emotions(index_dataset("ravdess", data), "basic6")
    cache = work / "cache"
    run_preprocess(videos, classes, cache, FeatureSettings(), data, "ravdess", workers=default_workers(), progress=False)
    common = dict(cache=str(cache), device=device, amp=amp, **SETTINGS)
    folds = []
    for fold in range(FOLDS):
        run = work / "cv" / f"fold{fold}"
        report = train_owned(TrainConfig(out=str(run), split="actor", fold=fold, folds=FOLDS, **common), log=lambda *a: None)
        split = json.loads((run / "split.json").read_text())
        actors = sorted({Path(e["path"]).parent.name for e in split["test"]})
        folds.append({"fold": fold, "test_actors": actors, "files": report["videos"], "video_accuracy": report["video_accuracy"],
                      "window_accuracy": report["window_accuracy"], "confusion": report["confusion"],
                      "best_epoch": report["stages"]["stage1_audio"]["best_epoch"]})  # fmt: skip
        log(f"fold {fold} (test {', '.join(actors)}): {100 * report['video_accuracy']:.1f} %")
    final = work / "final"
    train_owned(TrainConfig(out=str(final), split="all", **common), log=lambda *a: None)
    out.mkdir(parents=True, exist_ok=True)
    # float16: half the bytes; the model is rebuilt in float32 and loads them (load_state_dict converts).
    state = load_file(str(final / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out / "model.safetensors"))
    card = json.loads((final / "model.json").read_text())
    card.pop("amp", None)  # the shipped model answers in float32 on every machine, whatever its build trained in
    atomic_write_text(out / "model.json", json.dumps(card, indent=2))
    confusion = np.sum([f["confusion"] for f in folds], axis=0)
    accs = np.array([f["video_accuracy"] for f in folds])
    cv = {
        "data": str(data.name), "actors": sorted({v.subject for v in videos}), "files": len(videos), "classes": classes,
        "male_actors": sum(int(a[-2:]) % 2 == 1 for a in {v.subject for v in videos}),  # RAVDESS: odd numbers are male
        "files_per_class": {c: sum(v.label == c for v in videos) for c in classes},
        "folds": folds, "mean": float(accs.mean()), "std": float(accs.std(ddof=1)),
        "per_class_accuracy": {c: float(confusion[k, k] / confusion[k].sum()) for k, c in enumerate(classes)},
        "confusion": confusion.tolist(), "settings": {**SETTINGS, "modalities": list(SETTINGS["modalities"])},
        "config": json.loads((final / "config.json").read_text())["train"],
        "command": " ".join([Path(sys.executable).name, "-m", "avhgr.builtin.build", *sys.argv[1:]]),
        "commit": commit, "machine": describe_machine(device), "weights_bytes": (out / "model.safetensors").stat().st_size, "build_minutes": round((time.time() - t0) / 60, 1),
    }  # fmt: skip
    atomic_write_text(out / "cv.json", json.dumps(cv, indent=2))
    from ..plots import confusion_png

    confusion_png(confusion, classes, out / "confusion.png",
                  f"6-fold leave-two-actors-out, {cv['files']} files: {100 * cv['mean']:.1f} ± {100 * cv['std']:.1f} %")  # fmt: skip
    atomic_write_text(out / "MODEL_CARD.md", model_card(cv, card))
    return cv


def _commit() -> str | None:
    """HEAD, marked "+ changes" when files of the package differ from it."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()  # noqa: E731
    try:
        head = git("rev-parse", "HEAD")
        return head + (" + uncommitted changes" if git("status", "--porcelain", "--", str(Path(__file__).parents[1])) else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def model_card(cv: dict, card: dict) -> str:
    """The card, from the build's cv.json and the shipped model.json: no figure typed by hand."""
    folds = "\n".join(f"| {f['fold']} | {', '.join(f['test_actors'])} | {f['files']} | {100 * f['video_accuracy']:.1f} % | "
                      f"{100 * f['window_accuracy']:.1f} % | {f['best_epoch']} |" for f in cv["folds"])  # fmt: skip
    per_class = " · ".join(f"{c} {100 * a:.1f} %" for c, a in cv["per_class_accuracy"].items())
    c, feat = cv["config"], card["features"]
    n_folds, n_actors, k = len(cv["folds"]), len(cv["actors"]), len(cv["folds"][0]["test_actors"])
    device = f"on {cv['machine']}" if cv.get("machine") else {"cpu": "on the CPU", "cuda": "on a GPU"}.get(c["device"], f"on device {c['device']}")
    start = {"none": "from scratch", "imagenet": "from ImageNet weights"}.get(c["pretrained"], f"from {c['pretrained']}")
    commit = f"`{cv['commit']}`" if cv.get("commit") else "unknown"
    note = f"\n\nOn the commit: {cv['commit_note']}." if cv.get("commit_note") else ""
    net = c["backbone"].replace("resnet", "ResNet-")  # the config's: the build sets only what SETTINGS names
    augment = "Mel shifts and SpecAugment masks" if c["spec_augment"] else "no augmentation"
    per_epoch = f"{c['windows_per_epoch']} windows per file drawn anew each epoch from {feat['windows']} cached ones" \
        if c.get("windows_per_epoch") not in (None, 0, "all") else f"all {feat['windows']} cached windows per file each epoch"
    differs = differences_from_defaults(c, feat)
    differences = "Every setting is what `avhgr train` and `avhgr preprocess` choose by default."
    if differs:
        differences = "Every setting is what `avhgr train` and `avhgr preprocess` choose by default, except:\n\n" + "\n".join(
            f"- {k.replace('_', '-')}: {v['build']} (default {v['default']}): {v['why'] or 'this build chose it, `avhgr train` does not'}"
            for k, v in differs.items())  # fmt: skip
    level = {"window": "each window levelled by its own loudness", "recording": "spectrograms levelled per recording",
             "absolute": "absolute spectrogram levels"}[c["level"]]  # fmt: skip
    return f"""# Model card: avhgr built-in speech model

**What it does.** Recognises one of six basic emotions ({', '.join(cv['classes'])}) in the
*voice* of a recording: audio only, no face. `avhgr predict FILE` and `avhgr watch SOURCE` use it
when no `--model` is given. It cuts the audio into {feat['window_seconds']} s windows, keeps those with speech, turns
each into a {feat['n_mels']} × {FeatureSettings(**feat).spec_frames} log-Mel spectrogram, runs a {net} on it, and averages the windows' class
probabilities. A file without speech gets no emotion.

## Data

RAVDESS speech (Livingstone & Russo 2018), the audio of {cv['actors'][0]}–{cv['actors'][-1]} ({len(cv['actors'])} actors,
{cv['male_actors']} male and {len(cv['actors']) - cv['male_actors']} female), acted North-American English: two neutral
sentences spoken with each emotion at two intensities, twice. The six basic emotions only
(neutral and calm left out): {cv['files']} files, {', '.join(f'{n} {c}' for c, n in cv['files_per_class'].items())}.

## How it was made

```
{cv['command']}
```

at commit {commit}, in {cv['build_minutes']} minutes {device}{' with bf16 autocast' if c['amp'] else ''}. Recipe `{c['recipe']}` of
`avhgr train` (docs/training.md, "Training recipe"): {net} {start}, {c['epochs']} epochs, batch {c['batch_size']},
{'AdamW' if c['weight_decay'] else 'Adam'} (weight decay {c['weight_decay']}), learning rate {c['lr']:g} ({c['schedule']} schedule), {per_epoch},
{augment}, {level}, {'windows without speech left out' if c['evidence'] else 'every window used'}. The shipped model was trained on all {len(cv['actors'])} actors (`--split all`, the last epoch kept);
its weights are float16 ({cv['weights_bytes'] / 1e6:.1f} MB).{note}

{differences}

## How well it works

Leave-actors-out cross-validation inside actors {cv['actors'][0]}–{cv['actors'][-1]}, the same recipe: {n_folds} folds, each tests on
{k} actors the model never heard, validates on {k} others (best epoch) and trains on the other {n_actors - 2 * k}.

**Test video accuracy: {100 * cv['mean']:.1f} ± {100 * cv['std']:.1f} %** (mean ± std over the {n_folds} folds; chance {100 / len(cv['classes']):.1f} %).

| fold | test actors | files | file accuracy | window accuracy | best epoch |
| --- | --- | --- | --- | --- | --- |
{folds}

Per class, pooled over the folds: {per_class}.

![confusion matrix over the six folds](confusion.png)

## What it is not for

- It has heard {n_actors} actors reading two English sentences in a studio. Other languages, spontaneous
  or conversational speech, children, singing, music, telephone or noisy recordings are outside
  what it has seen; expect lower accuracy there, and check on your own data first.
- Acted emotion is not felt emotion. It must not be used to make decisions about people
  (hiring, policing, health, education).
- Six classes only: a neutral or calm voice is still put in one of them.

## Licence

The weights are derived from RAVDESS, which is licensed CC BY-NC-SA 4.0; they are shared under the
same terms: attribution (Livingstone SR, Russo FA (2018) The Ryerson Audio-Visual Database of
Emotional Speech and Song (RAVDESS). PLoS ONE 13(5): e0196391), non-commercial use only, and
derivatives under the same licence. The avhgr code is MIT-licensed; this licence covers the
weights and the figures of this card.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ravdess_speech"), help="RAVDESS speech (Actor_01 ...)")
    ap.add_argument("--work", type=Path, default=Path("build/ravdess_speech"), help="cache and runs (resumable)")
    ap.add_argument("--out", type=Path, default=SPEECH, help="where the model, its card and figures go")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on CUDA, and on CPUs with native bf16 as make demo)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--card-only", action="store_true", help="write MODEL_CARD.md again from the cv.json in --out (no training)")
    args = ap.parse_args()
    if args.card_only:
        cv, card = (json.loads((args.out / name).read_text()) for name in ("cv.json", "model.json"))
        atomic_write_text(args.out / "MODEL_CARD.md", model_card(cv, card))
        return
    if not args.data.is_dir():
        sys.exit(f"error: {args.data}: not a folder (RAVDESS speech, Actor_01 ... Actor_NN)")
    cv = build(args.data, args.work, args.out, args.amp, args.device)
    print(f"{args.out}: {100 * cv['mean']:.1f} ± {100 * cv['std']:.1f} % over {FOLDS} folds; model card {args.out / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
