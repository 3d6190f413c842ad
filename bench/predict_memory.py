"""Peak memory of `avhgr predict` on a long 1080p video against a short one.

    .venv/bin/python bench/predict_memory.py --model demo_out/runs/HGR_fgh [--minutes 20] [--fps 5] [--dense 300]

Generates a 1080p H.264 + AAC video of the given length (a face moving over a plain
background, a voice-like tone) and a 10 s one, runs `avhgr predict` on each in its own
process (and on the long one again with ``--dense`` windows instead of 30), and prints each
process's peak resident memory. Streaming decoding keeps them close; a decoder that loaded
the whole video would need gigabytes for the long one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avhgr.synth import face_photo, place, tone, write_media


def make_video(path: Path, seconds: float, fps: int) -> Path:
    photo = face_photo()
    n = int(seconds * fps)
    frames = (place((1080, 1920), photo, (960 + 300 * np.sin(i / 50), 540), 1.2) for i in range(n))
    return write_media(path, frames, fps, tone(seconds, 48_000, 180), crf=35)


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` in a child that reports its own peak RSS (ru_maxrss of the child only)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.stdout.strip()); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")  # fmt: skip
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return float(out[-1]), time.perf_counter() - t, out[0] if len(out) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo_out/runs/HGR_fgh")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--dense", type=int, default=300, help="also predict the long video with this many windows")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        long_video = make_video(Path(tmp) / "long.mp4", args.minutes * 60, args.fps)
        print(f"generated {args.minutes:g} min of 1080p at {args.fps} fps ({long_video.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
        short_video = make_video(Path(tmp) / "short.mp4", 10, args.fps)
        cmd = [sys.executable, "-m", "avhgr", "predict", "--model", args.model, "--device", "cpu"]
        runs = (("10 s", short_video, []), (f"{args.minutes:g} min", long_video, []),
                (f"{args.minutes:g} min, {args.dense} windows", long_video, ["--windows", str(args.dense)]))  # fmt: skip
        for name, path, extra in runs:
            mb, sec, line = peak_rss_mb([*cmd, *extra, str(path)])
            print(f"  {name:24s} peak RSS {mb:7.0f} MB  ({sec:.1f} s)  {line.split(': ', 1)[-1]}")


if __name__ == "__main__":
    main()
