"""What a warm `avhgr serve` costs and saves: latency and throughput under concurrent clients.

    .venv/bin/python bench/serve.py [--clip CLIP.mp4] [--requests 8] [--model builtin]

Starts `avhgr serve` on a free local port (one worker, a queue deep enough for 8 clients), posts
the clip to ``/api/predict`` from 1, 4 and 8 concurrent clients (each client sends ``--requests``
requests one after the other) and prints, for each: the median and 95th-percentile latency per
request and the requests answered per second; before them, ``--sequential`` requests in a row from one
client and the server's resident memory before and after (is it flat?); its peak memory (VmHWM); and
the same clip through ``avhgr predict --json`` in a fresh process (what a user pays per file
without a server: start, model load, MTCNN, the answer), median of three. Default clip: a real
RAVDESS clip (3.2 s, 1280 x 720) from ../shared/data/ravdess_av, else a generated 4 s clip.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

DEFAULT_CLIP = Path("../shared/data/ravdess_av/01-01-06-01-01-01-05.mp4")


def generated_clip(folder: Path) -> Path:
    from avhgr.synth import face_photo, place, write_media

    sr, seconds = 48_000, 4.0
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(160 * (1 + 0.05 * np.sin(2 * np.pi * 1.5 * t))) / sr
    audio = 0.3 * np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 1.5 * sum(np.sin(k * phase) / k for k in range(1, 7))
    photo = face_photo()
    frames = [place((480, 640), photo, (320 + 20 * np.sin(i / 5), 240), 0.45) for i in range(int(seconds * 25))]
    return write_media(folder / "clip.mp4", frames=frames, audio=audio.astype(np.float32), sample_rate=sr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, data: bytes, name: str) -> tuple[int, float]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    req = urllib.request.Request(url + "/api/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - t0


def clients(url: str, data: bytes, name: str, n: int, per_client: int) -> dict:
    latencies, codes = [], []

    def one():
        for _ in range(per_client):
            status, took = post(url, data, name)
            codes.append(status)
            if status == 200:
                latencies.append(took)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(latencies)
    return {"clients": n, "requests": len(codes), "answered": len(ok), "refused_503": codes.count(503),
            "median_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(ok[min(len(ok) - 1, int(np.ceil(0.95 * len(ok))) - 1)], 3) if ok else None,
            "requests_per_s": round(len(ok) / wall, 3)}  # fmt: skip


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """The server's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=4, help="requests each client sends in turn")
    ap.add_argument("--sequential", type=int, default=100, help="requests in a row from one client, for memory growth")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_out/serve.json"))
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="avhgr-bench-serve-"))
    clip = args.clip or (DEFAULT_CLIP if DEFAULT_CLIP.exists() else generated_clip(scratch))
    data = clip.read_bytes()
    port = free_port()
    model = ["--model", args.model] if args.model else []
    server = subprocess.Popen([sys.executable, "-m", "avhgr", "serve", "--port", str(port), "--queue", "8", "--device", "cpu", *model],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit("the server did not start")
                time.sleep(0.25)
        ready = time.perf_counter() - t0
        post(url, data, clip.name)  # warm-up: MTCNN and the experts' first call
        rss_before = memory_mb(server.pid, "VmRSS")
        sequential = clients(url, data, clip.name, 1, args.sequential)
        rss_after = memory_mb(server.pid, "VmRSS")
        rows = [clients(url, data, clip.name, n, args.requests) for n in (1, 4, 8)]
        alive = urllib.request.urlopen(url + "/healthz", timeout=5).status == 200
        memory = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    cold = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "avhgr", "predict", str(clip), "--json", "--device", "cpu", *model], check=True, capture_output=True)
        cold.append(time.perf_counter() - t0)
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": os.uname().nodename,
           "cpus": os.cpu_count(), "clip": clip.name, "clip_bytes": len(data), "server_ready_s": round(ready, 2), "concurrency": rows,
           "server_peak_rss_mb": round(memory, 1), "sequential": {**sequential, "rss_before_mb": round(rss_before, 1),
           "rss_after_mb": round(rss_after, 1), "growth_mb": round(rss_after - rss_before, 1)}, "alive_after": alive, "predict_process_median_s": round(statistics.median(cold), 2)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"clip {clip.name} ({len(data) / 2**20:.2f} MB); server ready in {ready:.1f} s; peak memory {memory:.0f} MB")
    print(f"{sequential['answered']} requests in a row: resident memory {rss_before:.0f} -> {rss_after:.0f} MB ({rss_after - rss_before:+.0f} MB); "
          f"median {sequential['median_s']:.2f} s; server alive after the concurrent clients: {alive}")
    print("clients  requests  answered  503  median s  p95 s  requests/s")
    for r in rows:
        print(f"{r['clients']:7d}  {r['requests']:8d}  {r['answered']:8d}  {r['refused_503']:3d}  {r['median_s']:8.2f}  {r['p95_s']:5.2f}  {r['requests_per_s']:10.2f}")
    print(f"avhgr predict --json in a fresh process: {statistics.median(cold):.2f} s (median of 3); "
          f"warm server, one client: {rows[0]['median_s']:.2f} s ({statistics.median(cold) / rows[0]['median_s']:.1f}x less)")


if __name__ == "__main__":
    main()
