"""Latency of `avhgr predict` and `avhgr watch`, as a user meets it (whole commands, cold processes).

    .venv/bin/python bench/latency.py                    # all rows
    .venv/bin/python bench/latency.py --clip FILE.mp4    # predict rows on your own clip

Rows:
  (1) `avhgr predict CLIP --model RUN` with the paper's model shape (ResNet-50 networks, 224 px
      faces; random weights: the time does not depend on them): the command's wall time, and
      inside one process the model load apart from the clip's own time (decode, faces,
      spectrograms, networks). CLIP: a RAVDESS audio-visual clip from ../shared/data when there,
      else a generated 3 s 720p clip with a face and a voice.
  (2) `avhgr predict CLIP` with the built-in speech model (the command a fresh install runs).
  (3) `avhgr watch -` with a ResNet-18 audio-visual model (the demo's shape, 64 px faces) on a
      20 s MPEG-TS stream written into its standard input at real-time pace: how far each
      window's answer comes after the moment its last sample went in (median, 90th percentile,
      the largest, and first vs last quarter: a delay that grows means it falls behind).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from avhgr.features import FeatureSettings
from avhgr.models import AVHGRModel
from avhgr.runs import save_weights
from avhgr.synth import face_photo, place, write_media

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLI = [sys.executable, "-m", "avhgr"]


def model_run(folder: Path, backbone: str, face_size: int) -> Path:
    """A run folder with an untrained audio-visual model of the given shape."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    save_weights(AVHGRModel(6, backbone, 2, feature_norm="batch").eval(), folder / "model.safetensors")
    card = {"classes": classes, "modalities": ["audio", "visual"], "backbone": backbone, "fusion_layers": 2, "feature_norm": "batch",
            "audio_stats": [-40.0, 20.0], "level": "recording", "evidence": True,
            "features": FeatureSettings(windows=30, face_size=face_size).as_dict()}  # 30: as the README's figures were measured  # fmt: skip
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def voice(seconds: float, sr: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(160 * (1 + 0.05 * np.sin(2 * np.pi * 1.5 * t))) / sr
    return (0.3 * np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 1.5 * sum(np.sin(k * phase) / k for k in range(1, 7))).astype(np.float32)


def clip_with_face(path: Path, seconds: float, size=(720, 1280), fps: float = 29.97) -> Path:
    photo = face_photo()
    frames = (place(size, photo, (size[1] / 2 + 20 * np.sin(i / 9), size[0] / 2), 0.9) for i in range(int(seconds * fps)))
    return write_media(path, frames, fps, voice(seconds))


def timed_command(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    return time.perf_counter() - t, res


def predict_rows(clip: Path, tmp: Path) -> None:
    from avhgr.predict import Predictor

    run = model_run(tmp / "r50", "resnet50", 224)
    timed_command([*CLI, "predict", str(clip), "--model", str(run), "--device", "cpu"])  # the page cache warm, as on a second call
    wall, res = timed_command([*CLI, "predict", str(clip), "--model", str(run), "--device", "cpu"])
    assert res.returncode in (0, 3), res.stderr
    t = time.perf_counter()
    predictor = Predictor(run, device="cpu")
    load = time.perf_counter() - t
    t = time.perf_counter()
    predictor.predict_file(clip)
    first = time.perf_counter() - t  # includes MTCNN's load on the first video
    t = time.perf_counter()
    predictor.predict_file(clip)
    again = time.perf_counter() - t
    print(f"(1) predict, ResNet-50 + 224 px faces, {clip.name}: command {wall:.2f} s; in one process: model load {load:.2f} s, "
          f"the clip {first:.2f} s (first, with MTCNN's load), {again:.2f} s (next clip)")  # fmt: skip
    try:
        from avhgr.builtin import builtin_model_dir

        builtin_model_dir()
    except Exception as exc:  # noqa: BLE001
        print(f"(2) predict with the built-in speech model: skipped ({exc})")
        return
    timed_command([*CLI, "predict", str(clip)])
    wall, res = timed_command([*CLI, "predict", str(clip)])
    print(f"(2) predict, built-in speech model, {clip.name}: command {wall:.2f} s -> {res.stdout.strip()}")


def watch_row(tmp: Path, seconds: float = 20.0) -> None:
    run = model_run(tmp / "r18", "resnet18", 64)
    stream = clip_with_face(tmp / "stream.ts", seconds, size=(360, 640), fps=25)
    data = stream.read_bytes()
    proc = subprocess.Popen([*CLI, "watch", "-", "--model", str(run), "--json", "--device", "cpu"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)  # fmt: skip
    time.sleep(6.0)  # let it import and load the model before the stream starts
    arrivals: list[tuple[float, dict]] = []

    def read() -> None:
        for line in proc.stdout:
            arrivals.append((time.perf_counter(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.perf_counter()
    chunk = 4096  # bytes at a steady rate: the whole file in `seconds`
    for i in range(0, len(data), chunk):
        target = start + seconds * i / len(data)
        time.sleep(max(0.0, target - time.perf_counter()))
        proc.stdin.write(data[i : i + chunk])
        proc.stdin.flush()
    proc.stdin.close()
    proc.wait()
    reader.join()
    delays = np.array([wall - (start + w["end"]) for wall, w in arrivals])
    q = max(1, len(delays) // 4)
    print(f"(3) watch, ResNet-18 + 64 px faces, {len(delays)} windows of a {seconds:.0f} s stream at real-time pace: delay after "
          f"the window's last sample went in: median {np.median(delays):.2f} s, 90 % {np.percentile(delays, 90):.2f} s, "
          f"max {delays.max():.2f} s; first quarter {np.median(delays[:q]):.2f} s, last quarter {np.median(delays[-q:]):.2f} s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", type=Path, default=None)
    ap.add_argument("--skip-watch", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = args.clip
        if clip is None:
            shared = sorted((SHARED / "ravdess_av").glob("*.mp4"))
            clip = shared[0] if shared else clip_with_face(tmp / "clip.mp4", 3.0)
        predict_rows(clip, tmp)
        if not args.skip_watch:
            watch_row(tmp)


if __name__ == "__main__":
    main()
