"""Training and inference throughput, measured side by side in one process on one device.

    .venv/bin/python bench/train_throughput.py --cache demo_out/cache                  # CPU, small backbone
    python bench/train_throughput.py --cache CACHE --backbone resnet50 --device cuda   # the paper's shape

Rows (windows/s):
  (a) a plain PyTorch reference step of the model shape, written here: two ResNets with
      512-d features, label FC, 2-layer fusion, Adam, CE + three Soft-HGR terms, on random
      tensors already on the device (same precision and memory format as the project uses there)
  (b) the project's own training step (train.train_step) on batches already on the device
  (c) the project's full loop (train.train_epoch) reading the real cache from disk
and the ratios b/a and c/b; (d) the data path alone (cache -> normalised batches on the
device, no compute), the ceiling the loop cannot pass (c/b needs d well above b); on CUDA,
the number of host syncs in one training step (torch's sync debug mode); then inference windows/s at batch 256, and `avhgr predict`
latency on one clip broken into decode, faces, spectrograms and networks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv

from avhgr.cache import Cache
from avhgr.data import device_batches, host_batch
from avhgr.models import AVHGRModel
from avhgr.train import Session, Stage, TrainConfig, prepare, train_epoch, train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / steps


class Reference(nn.Module):
    """The paper's model shape in plain PyTorch, independent of avhgr.models."""

    def __init__(self, backbone: str, classes: int):
        super().__init__()
        self.v, self.a = getattr(tv, backbone)(num_classes=512), getattr(tv, backbone)(num_classes=512)
        self.label = nn.Linear(classes, 512)
        self.fusion = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, classes))

    def forward(self, face, spec, y):
        f, g = self.v(face), self.a(spec.expand(-1, 3, -1, -1))
        return self.fusion(torch.cat([f, g], 1)), f, g, self.label(F.one_hot(y, self.label.in_features).to(f.dtype))


def soft_hgr_reference(u, v):
    u, v = u.float(), v.float()
    n = u.shape[0]
    u, v = u - u.mean(0), v - v.mean(0)
    return (u * v).sum() / (n - 1) - 0.5 * ((u.T @ u) * (v.T @ v)).sum() / (n - 1) ** 2


def host_syncs(step) -> int:
    """How many times ``step`` makes the host wait for the GPU (CUDA's sync debug mode warns
    on each)."""
    import warnings

    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        print(f"    sync: {w.message}")
    return len(caught)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="demo_out/cache")
    ap.add_argument("--backbone", default=None, help="default: resnet50 on CUDA, resnet18 on the CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=90)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--clip", default=None, help="media file for the predict latency (default: the cache's first video, if it is there)")
    ap.add_argument("--no-predict", action="store_true", help="skip the predict latency (it needs PyAV, librosa and facenet-pytorch)")
    ap.add_argument("--recipe", default="paper", help="paper (the reference's own steps: no augmentation) or avhgr")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    backbone = args.backbone or ("resnet50" if cuda else "resnet18")
    steps = args.steps or (30 if cuda else 3)
    warmup = 5 if cuda else 1
    cache = Cache.open(args.cache)
    c, bs = len(cache.classes), args.batch_size
    face_size = cache.visual.shape[1]
    amp = cuda
    fmt = torch.channels_last if cuda else torch.contiguous_format
    print(f"device {torch.cuda.get_device_name(device) if cuda else 'CPU'} ({torch.get_num_threads()} threads), {backbone}, "
          f"faces 3x{face_size}x{face_size}, spectrograms 1x94x94, batch {bs}, {'bf16 autocast + channels-last' if amp else 'float32'}")  # fmt: skip

    # (a) the plain reference step
    torch.manual_seed(0)
    ref = Reference(backbone, c).to(device, memory_format=fmt)
    opt = torch.optim.Adam(ref.parameters(), 1e-3)
    face = torch.randn(bs, 3, face_size, face_size, device=device).to(memory_format=fmt)
    spec = torch.randn(bs, 1, 94, 94, device=device).to(memory_format=fmt)
    y = torch.randint(0, c, (bs,), device=device)

    def ref_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, f, g, h = ref(face, spec, y)
            loss = F.cross_entropy(logits.float(), y) - (soft_hgr_reference(f, g) + soft_hgr_reference(f, h) + soft_hgr_reference(g, h))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    a = bs / timed(ref_step, steps, warmup, device)
    del ref, opt

    # (b) the project's step on batches already on the device, (c) its loop over the cache.
    # The paper's recipe: the reference step has no augmentation or feature normalisation either.
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(cache=args.cache, out=tmp, backbone=backbone, batch_size=bs, device=args.device, epochs=1, recipe=args.recipe)
        s = Session(cfg)
        torch.manual_seed(0)
        train_windows = s.reader.windows(s.split["train"])
        stage = Stage("stage2", AVHGRModel(c, backbone, 2, feature_norm=cfg.feature_norm), s.split["train"], 1, 10, corr="fgh")
        model, train_model, opt = prepare(s, stage)
        batch = s.reader.read(train_windows[:bs], s.labeled).to(device, s.channels_last)
        b = bs / timed(lambda: train_step(s, stage, train_model, opt, batch, cfg.lam), steps, warmup, device)
        # As many batches as (b) timed (3x on CUDA); a small cache is gone over more than once.
        n_windows = bs * steps * (3 if cuda else 1)
        windows = np.resize(train_windows, n_windows)
        train_epoch(s, stage, train_model, opt, windows[: 2 * bs], 0)  # warm the page cache and kernels
        sync(device)
        t = time.perf_counter()
        train_epoch(s, stage, train_model, opt, windows, 1)
        sync(device)
        cc = (len(windows) // bs * bs) / (time.perf_counter() - t)

        # (d) the data path alone, over the same windows (repeated to at least 20 batches)
        chunks = [windows[i : i + bs] for i in range(0, len(windows) - bs + 1, bs)]
        chunks = chunks * -(-20 // max(len(chunks), 1))
        read = lambda rows: s.reader.read(rows, s.labeled)  # noqa: E731
        sync(device)
        t = time.perf_counter()
        for _ in device_batches(read, chunks, device, s.channels_last):
            pass
        sync(device)
        d = len(chunks) * bs / (time.perf_counter() - t)
        syncs = host_syncs(lambda: train_step(s, stage, train_model, opt, batch, cfg.lam)) if cuda else None

        # inference at batch 256
        model.eval()
        inf_batch = s.reader.read(train_windows[:256]).to(device, s.channels_last)

        @torch.no_grad()
        def infer():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model(inf_batch)

        inf = len(inf_batch.labels) / timed(infer, max(3, steps // 3), warmup, device)
        print(f"  (a) plain PyTorch reference step      {a:9.1f} windows/s")
        print(f"  (b) avhgr training step (on device)   {b:9.1f} windows/s   b/a = {b / a:.3f}")
        print(f"  (c) avhgr loop reading the cache      {cc:9.1f} windows/s   c/b = {cc / b:.3f}")
        print(f"  (d) data path alone, cache -> device  {d:9.1f} windows/s   d/b = {d / b:.2f}")
        if syncs is not None:
            print(f"  host syncs in one training step: {syncs}")
        print(f"  inference, batch {len(inf_batch.labels)}                {inf:9.1f} windows/s")
    if not args.no_predict:
        predict_latency(cache, device, args.clip)


def predict_latency(cache: Cache, device, clip: str | None = None) -> None:
    """`avhgr predict` on one clip, stage by stage (default clip: the cache's first video)."""
    from avhgr.decode import probe, read_audio_windows, read_frames_at
    from avhgr.features import FeatureSettings, key_frame_times, log_mel, sample_window_starts, video_seed
    from avhgr.preprocess import make_cropper

    settings = FeatureSettings(**cache.settings["features"])
    root = Path(cache.root)
    if clip is None:
        video = next(v for v in cache.videos if v["has_video"] and v["has_audio"])
        index = {line.split(",")[0]: line.split(",")[1] for line in (root / "index.csv").read_text().splitlines()[1:]}
        clip = index[str(video["id"])]
    path = Path(clip)
    if not path.is_file():
        print(f"predict latency: skipped, {path} is not here (give --clip FILE)")
        return
    t = time.perf_counter()
    cropper = make_cropper(settings, str(device))
    cropper.detect([np.zeros((240, 320, 3), np.uint8)])
    log_mel(np.zeros((1, int(settings.window_seconds * settings.sample_rate)), np.float32), settings)
    cold = time.perf_counter() - t  # MTCNN weights, librosa's lazy imports and JIT: once per process
    times = {}
    t = time.perf_counter()
    info = probe(path)
    starts = sample_window_starts(info.duration, settings.windows, settings.window_seconds, np.random.default_rng(video_seed(0, path.name)))
    keys = key_frame_times(starts, settings.window_seconds, info.duration)
    frames = read_frames_at(path, keys)
    audio, _ = read_audio_windows(path, starts, settings.window_seconds)
    times["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    cropper.crop_video(frames, keys)
    times["faces"] = time.perf_counter() - t
    t = time.perf_counter()
    log_mel(audio, settings)
    times["spectrograms"] = time.perf_counter() - t
    model = AVHGRModel(len(cache.classes), "resnet50" if device.type == "cuda" else "resnet18").to(device).eval()
    n = settings.windows
    faces = np.zeros((n, settings.face_size, settings.face_size, 3), np.uint8)
    batch = host_batch(faces, np.zeros((n, 94, 94), np.float16), np.ones(n, bool), np.ones(n, bool), (0.0, 1.0)).to(device)
    with torch.no_grad():
        model(batch)
        sync(device)
        t = time.perf_counter()
        model(batch)
        sync(device)
    times["networks"] = time.perf_counter() - t
    total = sum(times.values())
    print(f"predict latency on {path.name} ({info.duration:.1f} s, {settings.windows} windows), warm: {1000 * total:.0f} ms = "
          + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in times.items()) + f"; once per process before the first file: {1000 * cold:.0f} ms")


if __name__ == "__main__":
    main()
