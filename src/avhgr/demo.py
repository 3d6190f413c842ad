"""The built-in demo: a small audio-visual corpus of real video files, then the whole system on it.

The corpus: a real face photograph (scikit-image's astronaut) moved, tilted and tinted per class,
with a voice-like sound whose pitch and rhythm depend on the class. As with real faces and
voices, *both* modalities carry the class, each one unreliably:

- six face states (head tilted left / upright / tilted right × warm / cool tint) and six voice
  states (low / middle / high pitch × slow / fast rhythm), one of each per class;
- in a share of a class's videos the face shows the state of the class's *visual twin* (the class
  that differs only in tint), in another share the voice has the state of its *audio twin* (a
  different pairing of classes), and in a third share the whole video, face and voice, is one of
  its visual twin's (label noise: no model can tell it from that class's videos).

So the face alone can be right on at most the videos where it does not mislead, the voice alone
too, and the two together on every video where at most one misleads: each pairing of a face state
and a voice state belongs to one class, so a video whose face points to two classes is settled by
its voice. Face and voice share the class information, which is
what the Soft-HGR term H(f, g) is there to find. Each video gets its own jitter of position,
size, tilt, tint, pitch, tempo and noise, and a "subject" (one of four), so actor-disjoint splits
work too. ``CorpusSpec`` holds every setting; the demo's (``DEMO_CORPUS``) is chosen so that no
fused model saturates (docs/training.md, "Does Soft-HGR help?"), the tests' ``EASY`` has no misleading
videos and clear states.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .datasets import BASIC6
from .features import FeatureSettings
from .synth import face_photo, write_media

TILTS = (1.0, 0.0, -1.0)  # head tilted left, upright, tilted right (times CorpusSpec.tilt degrees)
TINTS = (1.0, -1.0)  # warm, cool (red gain up and blue down by CorpusSpec.tint, or the reverse)
PITCHES = ((110, 140), (180, 220), (280, 340))  # Hz ranges of the voice's fundamental
RHYTHMS = ((2.5, 3.5), (6.0, 7.5))  # syllables per second: slow, fast


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that makes the corpus: its size and how hard each modality is to read."""

    per_class: int = 10
    duration: float = 2.0  # seconds per video
    fps: int = 10
    seed: int = 0
    face_misleads: float = 0.3  # share of a class's videos whose face shows its visual twin's state
    voice_misleads: float = 0.3  # another share whose voice shows its audio twin's state
    both_mislead: float = 0.0  # a third share that shows its visual twin's face and voice (no model can be right there)
    tilt: float = 18.0  # degrees between head states
    tint: float = 0.25  # colour gain between warm and cool
    tilt_jitter: float = 3.0  # per-video standard deviation of the tilt, degrees
    tint_jitter: float = 0.0  # per-video standard deviation of the colour gains
    noise: float = 0.05  # noise under the voice (its peak is 1 before scaling)

    def counts(self) -> tuple[int, int, int]:
        """Videos per class whose face only, voice only and both mislead."""
        n = self.per_class
        return int(round(self.face_misleads * n)), int(round(self.voice_misleads * n)), int(round(self.both_mislead * n))

    def ceilings(self) -> dict[str, float]:
        """The best possible video accuracy of the face alone, the voice alone and both together."""
        face, voice, both = (c / self.per_class for c in self.counts())
        return {"visual": 1 - face - both, "audio": 1 - voice - both, "fused": 1 - both}


EASY = dict(face_misleads=0.0, voice_misleads=0.0, both_mislead=0.0)  # the tests' corpus: every face and voice shows its class
# The demo's (and bench/learning.py's) corpus: of a class's 10 videos 2 mislead in the face, 2
# others in the voice, 1 is another class's video outright, and the states are close and
# jittered: the face alone can be right on 70 % of the videos, the voice alone too, both together
# on 90 % (CorpusSpec.ceilings), and a model has to learn that from 36 training videos.
DEMO_CORPUS = CorpusSpec(face_misleads=0.25, voice_misleads=0.25, both_mislead=0.1, tilt=9.0, tilt_jitter=4.0, tint=0.12, tint_jitter=0.04,
                         noise=0.3)  # fmt: skip


def visual_twin(c: int) -> int:
    """The class whose face state differs from ``c``'s only in tint: (0, 1), (2, 3), (4, 5)."""
    return c ^ 1


def audio_twin(c: int) -> int:
    """The class whose voice a misleading video of ``c`` has: (1, 2), (3, 4), (5, 0), another
    pairing than the faces', so that face and voice together always single out the class."""
    return (c + 1) % 6 if c % 2 else (c - 1) % 6


def states(label_index: int, k: int, spec: CorpusSpec) -> tuple[int, int]:
    """(face state, voice state) of the ``k``-th video of a class: its own, or for a fixed share of
    the class's videos (chosen by a seeded shuffle of k, disjoint for the three cases) its twin's."""
    face_only, voice_only, both = spec.counts()
    order = np.random.default_rng([spec.seed, 1000 + label_index]).permutation(spec.per_class)
    rank = int(np.flatnonzero(order == k % spec.per_class)[0])
    if rank < both:  # the whole video is one of its visual twin's
        return visual_twin(label_index), visual_twin(label_index)
    misleads_face = rank < both + face_only
    misleads_voice = both + face_only <= rank < both + face_only + voice_only
    face = visual_twin(label_index) if misleads_face else label_index
    voice = audio_twin(label_index) if misleads_voice else label_index
    return face, voice


# 384 px wide, not 320: at 320 the chroma rows (160 bytes) are not a multiple of 64, libx264
# reads past the end of its input planes, and the same frames encode to different files from
# run to run (7 to 20 of 48 videos here) - so the demo's figures changed from run to run.
FRAME_SIZE = (240, 384)
DEMO_FEATURES = FeatureSettings(windows=6, face_size=64, detect_size=FRAME_SIZE[1], min_face=30)


def _frames(face_state: int, n: int, rng: np.random.Generator, spec: CorpusSpec, size=FRAME_SIZE) -> list[np.ndarray]:
    from PIL import Image

    h, w = size
    warm = TINTS[face_state % 2] * spec.tint + rng.normal(0, spec.tint_jitter)
    gains = np.array([1 + warm, 1.0, 1 - warm], dtype=np.float32)
    photo = np.asarray(Image.fromarray(face_photo()).crop((130, 20, 330, 240)), dtype=np.float32)  # head and shoulders
    photo = Image.fromarray(np.clip(photo * gains, 0, 255).astype(np.uint8))
    angle = TILTS[face_state // 2] * spec.tilt + rng.normal(0, spec.tilt_jitter)
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


def _voice(voice_state: int, duration: float, rng: np.random.Generator, spec: CorpusSpec, sr: int = 48_000) -> np.ndarray:
    t = np.arange(int(duration * sr)) / sr
    f0 = rng.uniform(*PITCHES[voice_state // 2]) * (1 + 0.04 * np.sin(2 * np.pi * 1.3 * t))
    rate = rng.uniform(*RHYTHMS[voice_state % 2])
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k**1.2 for k in range(1, 9))
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6)), 0, None) ** 1.5
    signal = voice * envelope + rng.normal(0, spec.noise, len(t))
    return (0.3 * signal / np.max(np.abs(signal))).astype(np.float32)


def build_corpus(out: Path, spec: CorpusSpec = DEMO_CORPUS) -> Path:
    """Write the corpus (MP4, H.264 + AAC) and a manifest ``manifest.csv`` (path,label,subject);
    ``corpus.csv`` says which state each video's face and voice show, ``corpus.json`` the spec.
    A folder holding a corpus of another spec is emptied first (its videos would be kept)."""
    out.mkdir(parents=True, exist_ok=True)
    if corpus_changed(out, spec):
        for old in out.glob("*.mp4"):
            old.unlink()
    rng = np.random.default_rng(spec.seed)
    rows, truth = [], []
    for ci, label in enumerate(BASIC6):
        for k in range(spec.per_class):
            face, voice = states(ci, k, spec)
            name = f"{label}_{k:02d}.mp4"
            path = out / name
            frames = _frames(face, int(spec.duration * spec.fps), rng, spec)  # drawn even when the file exists: the same sequence
            audio = _voice(voice, spec.duration, rng, spec)
            if not path.exists():
                write_media(path, frames, spec.fps, audio)
            rows.append((name, label, f"subject{k % 4}"))
            truth.append((name, label, BASIC6[face], BASIC6[voice]))
    with (out / "manifest.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "subject"), *rows])
    with (out / "corpus.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "face_shows", "voice_shows"), *truth])
    (out / "corpus.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out / "manifest.csv"


def corpus_changed(folder: Path, spec: CorpusSpec) -> bool:
    """Whether ``folder`` holds videos of a corpus made with another spec (or of unknown spec)."""
    path = folder / "corpus.json"
    if not path.exists():
        return any(folder.glob("*.mp4"))
    try:
        return json.loads(path.read_text()) != asdict(spec)
    except (OSError, json.JSONDecodeError):
        return True


def corpus_and_cache(out: Path, spec: CorpusSpec = DEMO_CORPUS, progress: bool = True) -> tuple[list, dict]:
    """The corpus in ``out``/corpus and its cache in ``out``/cache (made, or read back): the demo's
    and bench/learning.py's. A folder holding another corpus, or a cache of other settings, has
    its corpus, cache and runs removed first: they were of other videos."""
    from .datasets import index_dataset, select_emotions
    from .preprocess import default_workers, run_preprocess

    settings = out / "cache" / "settings.json"
    stale_cache = settings.exists() and json.loads(settings.read_text()).get("features") != DEMO_FEATURES.as_dict()
    if corpus_changed(out / "corpus", spec) or stale_cache:
        for stale in ("corpus", "cache", "runs"):
            shutil.rmtree(out / stale, ignore_errors=True)
    manifest = build_corpus(out / "corpus", spec)
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    return videos, run_preprocess(videos, classes, out / "cache", DEMO_FEATURES, manifest, "csv", workers=default_workers(), progress=progress)


def run_demo(out: Path, spec: CorpusSpec = DEMO_CORPUS, epochs: int = 6, joint_epochs: int = 6, amp: bool | None = None,
             log=print) -> dict:  # fmt: skip
    """Corpus -> preprocess -> audio-only, visual-only, baseline, fg, fgh -> table, predict, report."""
    from .cache import Cache
    from .precision import default_amp
    from .plots import contact_sheet
    from .predict import Predictor
    from .train import TrainConfig, train_owned

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    ceilings = spec.ceilings()
    log(f"[1/5] building the demo corpus: {6 * spec.per_class} videos, 6 classes; the face shows the class on "
        f"{100 * ceilings['visual']:.0f} % of the videos, the voice on {100 * ceilings['audio']:.0f} %, "
        f"at least one of them on {100 * ceilings['fused']:.0f} %")  # fmt: skip
    log("[2/5] preprocessing with the real pipeline (MTCNN faces, log-Mel spectrograms)")
    videos, report = corpus_and_cache(out, spec)
    log(f"      {report['videos_ok']} videos, faces found in {100 * report['face_found_rate']:.1f} % of windows")
    contact_sheet(Cache.open(out / "cache"), out / "contact_sheet.png", per_class=2)
    amp = default_amp("cpu") if amp is None else amp  # TrainConfig's own rule, resolved here to say it
    log(f"[3/5] training on the CPU with a small backbone (ResNet-18, 64 px faces, {'bf16' if amp else 'float32'}); the paper's is ResNet-50")
    common = dict(cache=str(out / "cache"), backbone="resnet18", batch_size=32, lr=1e-3, epochs=epochs, device="cpu", seed=0, amp=amp)
    runs = out / "runs"
    results = {}
    quiet = lambda *a, **k: None  # noqa: E731
    for name, extra in DEMO_MODELS:
        t0 = time.time()
        extra = extra if "modalities" in extra else {**extra, "joint_epochs": joint_epochs}
        folder = runs / name.split(" (")[0].replace(" ", "_")
        init = dict(init_from=str(runs / "baseline")) if name != "baseline" else {}
        res = train_owned(TrainConfig(out=str(folder), **common, **extra, **init), log=quiet)
        stage2 = res["stages"].get("stage2", {})
        results[name] = {"video_accuracy": res["video_accuracy"], "window_accuracy": res["window_accuracy"], "run": str(folder),
                         "last_epoch_video_accuracy": (res.get("last_epoch") or {}).get("video_accuracy"),
                         "best_epoch": stage2.get("best_epoch"), "first_step_corr": stage2.get("first_step_corr")}  # fmt: skip
        log(f"      {name:14s} test video accuracy {100 * res['video_accuracy']:5.1f} %  [{time.time() - t0:.0f} s]")
    with (runs / "baseline" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    stage1 = {m: max(float(r["val_video_acc"]) for r in rows if r["stage"] == f"stage1_{m}") for m in ("audio", "visual")}
    log("[4/5] avhgr predict on one file")
    sample = out / "corpus" / "surprise_00.mp4"
    pred = Predictor(runs / "HGR_fgh").predict_file(sample)
    log(f"      {sample.name}: {pred['emotion']} ({100 * pred['probabilities'][pred['emotion']]:.0f} %)")
    log("[5/5] report")
    pct = lambda x: "" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    table = ["| model | test video accuracy | test window accuracy | last epoch's test video accuracy | stage-2 epoch kept | "
             "L_corr at the first joint step |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    kept = lambda v: "" if v["best_epoch"] is None else f"{v['best_epoch']} of {joint_epochs}"  # noqa: E731
    corr = lambda v: "" if v["first_step_corr"] is None else f"{v['first_step_corr']:+.2f}"  # noqa: E731
    table += [f"| {k} | {pct(v['video_accuracy'])} | {pct(v['window_accuracy'])} | {pct(v['last_epoch_video_accuracy'])} | {kept(v)} | {corr(v)} |"
              for k, v in results.items()]  # fmt: skip
    face, voice, both = (round(100 * c / spec.per_class) for c in spec.counts())
    md = [
        "# avhgr demo report", "",
        f"Corpus: {len(videos)} generated videos, 6 classes. Each class has its own face state (tilt x tint) and voice "
        f"state (pitch x rhythm), but in {face} % of a class's videos the face shows another class's state, in "
        f"another {voice} % the voice does, and in {both} % both do.", "",
        f"**What to expect.** The face alone can be right on at most {100 * ceilings['visual']:.0f} % of the videos, "
        f"the voice alone on {100 * ceilings['audio']:.0f} %, face and voice together on {100 * ceilings['fused']:.0f} % "
        f"(where at most one of them misleads): no model can pass {100 * ceilings['fused']:.0f} %, and a model has "
        "to learn all this from 36 training videos (12 more validate). The test set is 12 videos, so accuracies move in steps of 8.3 %, "
        "and one seed is one draw that can put the rows in any order: `bench/learning.py` gives the mean over 5 seeds, "
        "paired, with the difference HGR makes and its interval (docs/training.md, \"Does Soft-HGR help?\": there the fused "
        "baseline is ahead of both unimodal models on average, and fg and fgh at λ = 1 are not ahead of the baseline). "
        "Every joint model starts from the same stage 1 and the same one-epoch fusion warm-up (CE alone); its kept "
        "epoch is the best of the epochs after it, in which its own loss (with L_corr for fg and fgh) trained it. "
        "f, g and h are standardised over the batch (`--feature-norm batch`): where every row of a batch has both "
        "inputs, each Soft-HGR term lies in [-1.5, 1] (times n/(n-1)), so L_corr^fgh lies in [-3, +4.5] and "
        "L_corr^fg in [-1, +1.5]; rows without a face or without speech loosen that bound.", "",
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
    (out / "results.json").write_text(json.dumps({"models": results, "stage1_best_val_video_accuracy": stage1, "corpus": asdict(spec)}, indent=2))
    log("\n".join(table))
    log(f"report: {out / 'report.md'}  ({time.time() - t_start:.0f} s in all)")
    return results


DEMO_MODELS = [  # the baseline first: its stage 1 starts the others
    ("baseline", dict(corr="none")),
    ("audio only", dict(modalities=("audio",))),
    ("visual only", dict(modalities=("visual",))),
    ("HGR fg (λ=1)", dict(corr="fg")),
    ("HGR fgh (λ=1)", dict(corr="fgh")),
]
