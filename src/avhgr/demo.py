"""The built-in demo: a small audio-visual corpus of real video files, then the whole system on it.

The corpus: a real face photograph (scikit-image's astronaut) moved and deformed per class,
with a voice-like sound whose pitch and rhythm depend on the class. Six classes are the
product of three *visual* states (head tilted left / upright / tilted right and squashed) and
two *audio* states (low, slow voice / high, fast voice), so neither modality alone can tell
all six apart: the face alone confuses the two classes of each visual state (at best 50 %),
the voice alone the three classes of each audio state (at best 33 %). Only fusion can reach
100 %. Each video gets its own jitter of position, size, tilt, pitch, tempo and noise, and a
"subject" (one of four), so actor-disjoint splits work too.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from .datasets import BASIC6
from .synth import face_photo, write_media

VISUAL_STATES = ("tilt-left", "upright", "tilt-right-squashed")
AUDIO_STATES = ("low-slow", "high-fast")


def class_states(label_index: int) -> tuple[int, int]:
    return label_index // 2, label_index % 2


# 384 px wide, not 320: at 320 the chroma rows (160 bytes) are not a multiple of 64, libx264
# reads past the end of its input planes, and the same frames encode to different files from
# run to run (7 to 20 of 48 videos here) - so the demo's figures changed from run to run.
FRAME_SIZE = (240, 384)


def _frames(visual_state: int, n: int, rng: np.random.Generator, size=FRAME_SIZE) -> list[np.ndarray]:
    from PIL import Image

    h, w = size
    photo = Image.fromarray(face_photo()).crop((130, 20, 330, 240))  # the head and shoulders
    angle = {0: 18.0, 1: 0.0, 2: -18.0}[visual_state] + rng.normal(0, 3)
    squash = 0.72 if visual_state == 2 else 1.0
    scale = rng.uniform(0.75, 0.95)
    cx, cy = w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-12, 12)
    bg = int(rng.integers(170, 250))
    frames = []
    for i in range(n):
        sway = 4 * np.sin(2 * np.pi * i / n + rng.uniform(0, 6))
        img = photo.resize((int(photo.width * scale), int(photo.height * scale * squash)), Image.BILINEAR)
        img = img.rotate(angle + 0.5 * sway, resample=Image.BILINEAR, expand=True, fillcolor=(bg, bg, bg))
        canvas = Image.new("RGB", (w, h), (bg, bg, bg))
        canvas.paste(img, (int(cx + sway - img.width / 2), int(cy - img.height / 2)))
        frames.append(np.asarray(canvas))
    return frames


def _voice(audio_state: int, duration: float, rng: np.random.Generator, sr: int = 48_000) -> np.ndarray:
    t = np.arange(int(duration * sr)) / sr
    f0 = (rng.uniform(110, 150) if audio_state == 0 else rng.uniform(240, 300)) * (1 + 0.04 * np.sin(2 * np.pi * 1.3 * t))
    rate = rng.uniform(2.5, 3.5) if audio_state == 0 else rng.uniform(6, 7.5)  # syllables per second
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k**1.2 for k in range(1, 9))
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6)), 0, None) ** 1.5
    signal = voice * envelope + rng.normal(0, 0.05, len(t))
    return (0.3 * signal / np.max(np.abs(signal))).astype(np.float32)


def build_corpus(out: Path, per_class: int = 8, duration: float = 2.0, fps: int = 10, seed: int = 0) -> Path:
    """Write the corpus (MP4, H.264 + AAC) and a manifest ``manifest.csv`` (path,label,subject)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for ci, label in enumerate(BASIC6):
        vstate, astate = class_states(ci)
        for k in range(per_class):
            name = f"{label}_{k:02d}.mp4"
            path = out / name
            if not path.exists():
                frames = _frames(vstate, int(duration * fps), rng)
                write_media(path, frames, fps, _voice(astate, duration, rng))
            else:
                rng.random()  # keep the generator's sequence the same when files exist
            rows.append((name, label, f"subject{k % 4}"))
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "subject"))
        writer.writerows(rows)
    return out / "manifest.csv"


def run_demo(out: Path, per_class: int = 10, epochs: int = 6, pretrain_epochs: int = 6, log=print) -> dict:
    """Corpus -> preprocess -> audio-only, visual-only, baseline, fg, fgh -> table, predict, report."""
    from .cache import Cache
    from .datasets import index_dataset, select_emotions
    from .features import FeatureSettings
    from .plots import contact_sheet
    from .predict import Predictor
    from .preprocess import default_workers, run_preprocess
    from .train import TrainConfig, train

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/5] building the demo corpus: {6 * per_class} videos, 6 classes = 3 face states x 2 voice states")
    manifest = build_corpus(out / "corpus", per_class)
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    log("[2/5] preprocessing with the real pipeline (MTCNN faces, log-Mel spectrograms)")
    settings = FeatureSettings(windows=10, face_size=64, detect_size=FRAME_SIZE[1], min_face=30)
    report = run_preprocess(videos, classes, out / "cache", settings, manifest, "csv", workers=default_workers())
    log(f"      {report['videos_ok']} videos, faces found in {100 * report['face_found_rate']:.1f} % of windows")
    contact_sheet(Cache.open(out / "cache"), out / "contact_sheet.png", per_class=2)
    log("[3/5] training on the CPU with a small backbone (ResNet-18, 64 px faces); the paper's is ResNet-50")
    common = dict(cache=str(out / "cache"), backbone="resnet18", batch_size=32, lr=1e-3, epochs=epochs, device="cpu", seed=0)
    runs = out / "runs"
    results = {}
    quiet = lambda *a, **k: None  # noqa: E731
    for name, extra in [
        ("baseline", dict(corr="none", pretrain_epochs=pretrain_epochs)),
        ("audio only", dict(modalities=("audio",), init_from=str(runs / "baseline"))),
        ("visual only", dict(modalities=("visual",), init_from=str(runs / "baseline"))),
        ("HGR fg (λ=1)", dict(corr="fg", init_from=str(runs / "baseline"))),
        ("HGR fgh (λ=1)", dict(corr="fgh", init_from=str(runs / "baseline"))),
    ]:
        t0 = time.time()
        folder = runs / name.split(" (")[0].replace(" ", "_")
        cfg = TrainConfig(out=str(folder), **common, **extra)
        res = train(cfg, resume=True, log=quiet)
        results[name] = {"video_accuracy": res["video_accuracy"], "window_accuracy": res["window_accuracy"], "run": str(folder)}
        log(f"      {name:14s} test video accuracy {100 * res['video_accuracy']:5.1f} %  [{time.time() - t0:.0f} s]")
    log("[4/5] avhgr predict on one file")
    sample = out / "corpus" / "surprise_00.mp4"
    pred = Predictor(runs / "HGR_fgh").predict_file(sample)
    log(f"      {sample.name}: {pred['emotion']} ({100 * pred['probabilities'][pred['emotion']]:.0f} %)")
    log("[5/5] report")
    table = ["| model | test video accuracy | test window accuracy |", "| --- | --- | --- |"]
    table += [f"| {k} | {100 * v['video_accuracy']:.1f} % | {100 * v['window_accuracy']:.1f} % |" for k, v in results.items()]
    md = [
        "# avhgr demo report", "",
        f"Corpus: {len(videos)} generated videos, 6 classes = 3 face states x 2 voice states; "
        "neither modality alone can separate all six (face alone at best 50 %, voice alone at best 33 %).", "",
        *table, "",
        f"Prediction on `{sample.name}` (true: surprise): **{pred['emotion']}**", "",
        "Confusion matrix of the HGR fgh model on the test videos:", "",
        "![confusion](runs/HGR_fgh/test_confusion.png)", "",
        "Face crops and spectrograms as the networks see them:", "", "![contact sheet](contact_sheet.png)", "",
        f"Total time: {time.time() - t_start:.0f} s on the CPU.",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log("\n".join(table))
    log(f"report: {out / 'report.md'}  ({time.time() - t_start:.0f} s in all)")
    return results
