"""How fast the cache becomes network inputs, without any network: the ceiling of the
training loop. Side by side in one process, batches of 90 over a real cache:

  (1) host normalisation, one batch at a time: the previous design, written here: gather
      rows, convert to float32 and normalise in numpy on the host, then copy
  (2) the host's share now: gather the rows as stored (uint8 faces, float16 spectrograms),
      plus page-locking them when the device is a GPU
  (3) the whole path now: avhgr.data.device_batches (threads reading ahead, normalisation on
      the device), batches ready on the device

    .venv/bin/python bench/data_path.py --cache CACHE [--device cuda]

On a GPU, (3) must stay well above the training step's windows/s (about 1,900 for the
paper's model on an H100) for the loop to keep the GPU busy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from avhgr.cache import Cache
from avhgr.data import IMAGENET_MEAN, IMAGENET_STD, WindowReader, _gather, device_batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=90)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cache = Cache.open(args.cache)
    reader = WindowReader(cache)
    reader.fit_audio_stats(np.arange(len(cache.windows["video"])))
    n = len(cache.windows["video"])
    rng = np.random.default_rng(0)
    chunks = [rng.choice(n, args.batch_size, replace=n < args.batch_size) for _ in range(args.batches)]
    size = cache.visual.shape[1]
    print(f"{args.cache}: {n} windows, faces {size}x{size}, batch {args.batch_size}, device {torch.cuda.get_device_name(device) if cuda else 'CPU'}, "
          f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    np.asarray(cache.visual[:]).sum()  # the cache in the page cache, as after the first epoch

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def host_normalised(rows):
        faces = (_gather(cache.visual, rows).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        specs = (_gather(cache.spectrograms, rows).astype(np.float32) - reader.audio_mean) / reader.audio_std
        visual = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2))).to(device)
        return visual, torch.from_numpy(specs[:, None]).to(device)

    def host_share(rows):
        batch = reader.read(rows)
        return batch.pin_memory() if cuda else batch

    rows_per_s = {}
    for name, run in (
        ("(1) host normalisation, one at a time", lambda: [host_normalised(r) for r in chunks]),
        ("(2) host share now: gather as stored" + (" + pin" if cuda else ""), lambda: [host_share(r) for r in chunks]),
        ("(3) device_batches, ready on the device", lambda: list(device_batches(reader.read, chunks, device, cuda))),
    ):
        run()  # warm-up
        sync()
        t = time.perf_counter()
        run()
        sync()
        rows_per_s[name] = args.batches * args.batch_size / (time.perf_counter() - t)
    first = next(iter(rows_per_s.values()))
    for name, v in rows_per_s.items():
        print(f"  {name:44s} {v:9.0f} windows/s   {v / first:5.2f}x (1)")


if __name__ == "__main__":
    main()
