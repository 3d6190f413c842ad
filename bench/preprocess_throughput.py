"""Preprocessing throughput on the RAVDESS clips: videos/s and windows/s, and where time goes.

    .venv/bin/python bench/preprocess_throughput.py [--root ../shared/data/ravdess_av] [--workers N] [--device cpu]

Prints (1) the per-stage time of one worker on each clip (decode, faces, spectrograms) and
(2) the whole `preprocess` run with N worker processes, start-up included.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avhgr.datasets import index_dataset, select_emotions
from avhgr.decode import probe, read_audio_windows, read_frames_at
from avhgr.features import FeatureSettings, key_frame_times, log_mel, sample_window_starts, video_seed
from avhgr.preprocess import make_cropper, run_preprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/ravdess_av"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="process the clip list this many times (amortises worker start-up)")
    args = ap.parse_args()
    videos, classes = select_emotions(index_dataset("ravdess", args.root), "all")
    s = FeatureSettings()
    torch.set_num_threads(1)
    cropper = make_cropper(s, args.device)
    cropper.detect([np.zeros((720, 1280, 3), np.uint8)])  # warm-up
    log_mel(np.zeros((1, 24_000), np.float32), s)
    stages = {"probe": 0.0, "decode frames": 0.0, "decode audio": 0.0, "spectrograms": 0.0, "faces (MTCNN + crop)": 0.0}
    for v in videos:
        t = time.perf_counter()
        info = probe(v.path)
        stages["probe"] += time.perf_counter() - t
        starts = sample_window_starts(info.duration, s.windows, s.window_seconds, np.random.default_rng(video_seed(0, v.path.name)))
        keys = key_frame_times(starts, s.window_seconds, info.duration)
        t = time.perf_counter()
        frames = read_frames_at(v.path, keys)
        stages["decode frames"] += time.perf_counter() - t
        t = time.perf_counter()
        audio, _ = read_audio_windows(v.path, starts, s.window_seconds)
        stages["decode audio"] += time.perf_counter() - t
        t = time.perf_counter()
        log_mel(audio, s)
        stages["spectrograms"] += time.perf_counter() - t
        t = time.perf_counter()
        cropper.crop_video(frames, keys)
        stages["faces (MTCNN + crop)"] += time.perf_counter() - t
    total = sum(stages.values())
    print(f"one worker, one thread, {len(videos)} clips, {s.windows} windows each:")
    for name, sec in stages.items():
        print(f"  {name:22s} {sec / len(videos) * 1000:8.1f} ms/video  {100 * sec / total:5.1f} %")
    print(f"  {'total':22s} {total / len(videos) * 1000:8.1f} ms/video  -> {len(videos) / total:.2f} videos/s per worker")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = run_preprocess(videos * args.repeat, classes, tmp, s, args.root, "ravdess", workers=args.workers, device=args.device, progress=False)
        wall = time.perf_counter() - t
    n = report["videos_ok"]
    print(f"avhgr preprocess, {args.workers} workers on {os.cpu_count()} cores ({args.device}), worker start-up included:")
    print(f"  {n / wall:.2f} videos/s, {report['windows'] / wall:.1f} windows/s ({wall:.1f} s for {n} videos)")
    print(f"  steady state (per-worker rate above x {args.workers} workers): {args.workers * len(videos) / total:.2f} videos/s")


if __name__ == "__main__":
    main()
