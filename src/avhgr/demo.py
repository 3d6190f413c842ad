"""The built-in demo: a small audio-visual corpus of real video files, then the whole system on it.

The corpus: a real face photograph (scikit-image's astronaut) moved, tilted and tinted per class,
with a voice-like sound whose pitch and rhythm depend on the class. As with real faces and
voices, *both* modalities carry the class, each one unreliably:

- six face states (head tilted left / upright / tilted right × warm / cool tint) and six voice
  states (low / middle / high pitch × slow / fast rhythm), one of each per class;
- in 30 % of a class's videos the face shows the state of the class's *visual twin* (the class
  that differs only in tint), and in another 30 % the voice has the state of its *audio twin*
  (a different pairing of classes), never both in one video.

So the face alone can be right on at most 70 % of videos, the voice alone too, and the two
together on all of them: a video whose face points to two classes is settled by its voice.
Face and voice share the class information, which is what the Soft-HGR term H(f, g) is there
to find. Each video gets its own jitter of position, size, tilt, pitch, tempo and noise, and a
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

TILTS = (18.0, 0.0, -18.0)  # degrees: head tilted left, upright, tilted right
TINTS = ((1.25, 1.0, 0.8), (0.8, 1.0, 1.25))  # RGB gains: warm, cool
PITCHES = ((110, 140), (180, 220), (280, 340))  # Hz ranges of the voice's fundamental
RHYTHMS = ((2.5, 3.5), (6.0, 7.5))  # syllables per second: slow, fast
UNRELIABLE = 0.3  # share of each class's videos whose face (and another share whose voice) misleads


def visual_twin(c: int) -> int:
    """The class whose face state differs from ``c``'s only in tint: (0, 1), (2, 3), (4, 5)."""
    return c ^ 1


def audio_twin(c: int) -> int:
    """The class whose voice a misleading video of ``c`` has: (1, 2), (3, 4), (5, 0), another
    pairing than the faces', so that face and voice together always single out the class."""
    return (c + 1) % 6 if c % 2 else (c - 1) % 6


def states(label_index: int, k: int, per_class: int, unreliable: float = UNRELIABLE) -> tuple[int, int]:
    """(face state, voice state) of the ``k``-th video of a class: its own, or for a fixed
    ``unreliable`` share of the videos (spread over k, disjoint for the two) its twin's."""
    n = int(round(unreliable * per_class))
    spread = lambda offset: {int(i * per_class / max(n, 1)) + offset for i in range(n)}  # noqa: E731
    misleading_face, misleading_voice = spread(1), spread(2) - spread(1)
    face = visual_twin(label_index) if k % per_class in misleading_face else label_index
    voice = audio_twin(label_index) if k % per_class in misleading_voice else label_index
    return face, voice


# 384 px wide, not 320: at 320 the chroma rows (160 bytes) are not a multiple of 64, libx264
# reads past the end of its input planes, and the same frames encode to different files from
# run to run (7 to 20 of 48 videos here) - so the demo's figures changed from run to run.
FRAME_SIZE = (240, 384)


def _frames(face_state: int, n: int, rng: np.random.Generator, size=FRAME_SIZE) -> list[np.ndarray]:
    from PIL import Image

    h, w = size
    gains = np.array(TINTS[face_state % 2], dtype=np.float32)
    photo = np.asarray(Image.fromarray(face_photo()).crop((130, 20, 330, 240)), dtype=np.float32)  # head and shoulders
    photo = Image.fromarray(np.clip(photo * gains, 0, 255).astype(np.uint8))
    angle = TILTS[face_state // 2] + rng.normal(0, 3)
    scale = rng.uniform(0.75, 0.95)
    cx, cy = w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-12, 12)
    bg = int(rng.integers(170, 250))
    frames = []
    for i in range(n):
        sway = 4 * np.sin(2 * np.pi * i / n + rng.uniform(0, 6))
        img = photo.resize((int(photo.width * scale), int(photo.height * scale)), Image.BILINEAR)
        img = img.rotate(angle + 0.5 * sway, resample=Image.BILINEAR, expand=True, fillcolor=(bg, bg, bg))
        canvas = Image.new("RGB", (w, h), (bg, bg, bg))
        canvas.paste(img, (int(cx + sway - img.width / 2), int(cy - img.height / 2)))
        frames.append(np.asarray(canvas))
    return frames


def _voice(voice_state: int, duration: float, rng: np.random.Generator, sr: int = 48_000) -> np.ndarray:
    t = np.arange(int(duration * sr)) / sr
    f0 = rng.uniform(*PITCHES[voice_state // 2]) * (1 + 0.04 * np.sin(2 * np.pi * 1.3 * t))
    rate = rng.uniform(*RHYTHMS[voice_state % 2])
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k**1.2 for k in range(1, 9))
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6)), 0, None) ** 1.5
    signal = voice * envelope + rng.normal(0, 0.05, len(t))
    return (0.3 * signal / np.max(np.abs(signal))).astype(np.float32)


def build_corpus(out: Path, per_class: int = 10, duration: float = 2.0, fps: int = 10, seed: int = 0,
                 unreliable: float = UNRELIABLE) -> Path:  # fmt: skip
    """Write the corpus (MP4, H.264 + AAC) and a manifest ``manifest.csv`` (path,label,subject);
    ``corpus.csv`` says which state each video's face and voice show."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for ci, label in enumerate(BASIC6):
        for k in range(per_class):
            face, voice = states(ci, k, per_class, unreliable)
            name = f"{label}_{k:02d}.mp4"
            path = out / name
            frames = _frames(face, int(duration * fps), rng)  # drawn even when the file exists: the same sequence
            audio = _voice(voice, duration, rng)
            if not path.exists():
                write_media(path, frames, fps, audio)
            rows.append((name, label, f"subject{k % 4}"))
            truth.append((name, label, BASIC6[face], BASIC6[voice]))
    with (out / "manifest.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "subject"), *rows])
    with (out / "corpus.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "face_shows", "voice_shows"), *truth])
    return out / "manifest.csv"


def run_demo(out: Path, per_class: int = 10, epochs: int = 6, pretrain_epochs: int = 6, amp: bool | None = None, log=print) -> dict:
    """Corpus -> preprocess -> audio-only, visual-only, baseline, fg, fgh -> table, predict, report."""
    from .cache import Cache
    from .datasets import index_dataset, select_emotions
    from .distributed import fast_amp
    from .features import FeatureSettings
    from .plots import contact_sheet
    from .predict import Predictor
    from .preprocess import default_workers, run_preprocess
    from .train import TrainConfig, train

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/5] building the demo corpus: {6 * per_class} videos, 6 classes; face and voice each show the class "
        f"on {100 - 100 * UNRELIABLE:.0f} % of the videos, together on all")  # fmt: skip
    manifest = build_corpus(out / "corpus", per_class)
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    log("[2/5] preprocessing with the real pipeline (MTCNN faces, log-Mel spectrograms)")
    settings = FeatureSettings(windows=10, face_size=64, detect_size=FRAME_SIZE[1], min_face=30)
    report = run_preprocess(videos, classes, out / "cache", settings, manifest, "csv", workers=default_workers())
    log(f"      {report['videos_ok']} videos, faces found in {100 * report['face_found_rate']:.1f} % of windows")
    contact_sheet(Cache.open(out / "cache"), out / "contact_sheet.png", per_class=2)
    # bf16 autocast where the CPU has it natively (2-2.5x faster; float32 elsewhere)
    amp = fast_amp("cpu") if amp is None else amp
    log(f"[3/5] training on the CPU with a small backbone (ResNet-18, 64 px faces, {'bf16' if amp else 'float32'}); the paper's is ResNet-50")
    common = dict(cache=str(out / "cache"), backbone="resnet18", batch_size=32, lr=1e-3, epochs=epochs, device="cpu", seed=0, amp=amp)
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
        res = train(TrainConfig(out=str(folder), **common, **extra), resume=True, log=quiet)
        stage2 = res["stages"].get("stage2", {})
        results[name] = {"video_accuracy": res["video_accuracy"], "window_accuracy": res["window_accuracy"], "run": str(folder),
                         "first_step_corr": stage2.get("first_step_corr")}  # fmt: skip
        log(f"      {name:14s} test video accuracy {100 * res['video_accuracy']:5.1f} %  [{time.time() - t0:.0f} s]")
    with (runs / "baseline" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    stage1 = {m: max(float(r["val_video_acc"]) for r in rows if r["stage"] == f"stage1_{m}") for m in ("audio", "visual")}
    log("[4/5] avhgr predict on one file")
    sample = out / "corpus" / "surprise_00.mp4"
    pred = Predictor(runs / "HGR_fgh").predict_file(sample)
    log(f"      {sample.name}: {pred['emotion']} ({100 * pred['probabilities'][pred['emotion']]:.0f} %)")
    log("[5/5] report")
    table = ["| model | test video accuracy | test window accuracy | L_corr at the first joint step |", "| --- | --- | --- | --- |"]
    table += [f"| {k} | {100 * v['video_accuracy']:.1f} % | {100 * v['window_accuracy']:.1f} % | "
              f"{'' if v['first_step_corr'] is None else format(v['first_step_corr'], '+.2f')} |" for k, v in results.items()]  # fmt: skip
    ceiling = 100 - 100 * UNRELIABLE
    md = [
        "# avhgr demo report", "",
        f"Corpus: {len(videos)} generated videos, 6 classes. Each class has its own face state (tilt x tint) and voice "
        f"state (pitch x rhythm), but in {100 * UNRELIABLE:.0f} % of a class's videos the face shows another class's "
        f"state, and in another {100 * UNRELIABLE:.0f} % the voice does (never both).", "",
        "**What to expect.** The face alone, or the voice alone, can be right on at most "
        f"{ceiling:.0f} % of the videos; face and voice together on all of them, so the fused models "
        "should beat both unimodal rows by a wide margin. The test set is 12 videos, so accuracies move in steps "
        "of 8.3 %, and one seed is one draw: `bench/learning.py` gives the mean over seeds. Soft-HGR's correlation "
        "loss L_corr is bounded here (the features are standardised, `--feature-norm batch`): it starts between "
        "-4.5 and +4.5 and falls as face and voice features come to agree.", "",
        *table, "",
        f"Stage 1 (each network alone) best validation video accuracy: audio {100 * stage1['audio']:.1f} %, "
        f"visual {100 * stage1['visual']:.1f} % (run `runs/baseline/metrics.csv`).", "",
        f"Prediction on `{sample.name}` (true: surprise): **{pred['emotion']}** "
        f"({100 * pred['probabilities'][pred['emotion']]:.0f} %)", "",
        "Confusion matrix of the HGR fgh model on the test videos:", "",
        "![confusion](runs/HGR_fgh/test_confusion.png)", "",
        "Face crops and spectrograms as the networks see them:", "", "![contact sheet](contact_sheet.png)", "",
        f"Total time: {time.time() - t_start:.0f} s on the CPU ({'bf16 autocast: this CPU computes bfloat16 natively' if amp else 'float32'}).",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps({"models": results, "stage1_best_val_video_accuracy": stage1}, indent=2))
    log("\n".join(table))
    log(f"report: {out / 'report.md'}  ({time.time() - t_start:.0f} s in all)")
    return results
