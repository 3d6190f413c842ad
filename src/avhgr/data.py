"""From a cache to training batches: splits by video, the labelled subset, batch reading.

Splits are by video, never by window, and stratified by label:
  random  70 / 15 / 15 % of each class's videos (the paper's protocol)
  actor   whole subjects per part (no actor in two parts), about 15 % of subjects each for
          validation and test; the protocol peers use on RAVDESS
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from .cache import Cache

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREFETCH = 4  # batches read ahead of the one being computed


def split_videos(
    labels: dict[int, int], subjects: dict[int, str], method: str = "random", seed: int = 0, val: float = 0.15, test: float = 0.15
) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    if method == "random":
        for label in sorted(set(labels.values())):
            vids = sorted(v for v, l in labels.items() if l == label)
            rng.shuffle(vids)
            n_test = int(round(test * len(vids)))
            n_val = int(round(val * len(vids)))
            parts["test"] += vids[:n_test]
            parts["val"] += vids[n_test : n_test + n_val]
            parts["train"] += vids[n_test + n_val :]
    elif method == "actor":
        people = sorted(set(subjects[v] for v in labels))
        if len(people) < 3:
            raise ValueError(f"--split actor needs at least 3 subjects, the cache has {len(people)}")
        rng.shuffle(people)
        n_test = max(1, int(round(test * len(people))))
        n_val = max(1, int(round(val * len(people))))
        group = {p: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, p in enumerate(people)}
        for v in sorted(labels):
            parts[group[subjects[v]]].append(v)
    else:
        raise ValueError(f"unknown split {method!r}: random or actor")
    return {k: sorted(v) for k, v in parts.items()}


def labeled_subset(train: list[int], labels: dict[int, int], fraction: float, seed: int = 0) -> set[int]:
    """A stratified fraction of the training videos that keep their labels (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--labeled-fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed + 7919)
    keep: set[int] = set()
    for label in sorted({labels[v] for v in train}):
        vids = sorted(v for v in train if labels[v] == label)
        rng.shuffle(vids)
        keep.update(vids[: max(1, math.ceil(fraction * len(vids)))])
    return keep


@dataclass
class Batch:
    """Network inputs on the compute device."""

    visual: torch.Tensor | None  # (n, 3, S, S) float, ImageNet-normalised
    audio: torch.Tensor | None  # (n, 1, M, T) float, standardised
    # The presence masks stay on the host: which rows to run through each network is then
    # decided without waiting for the device (no host sync in the training step).
    visual_present: torch.Tensor  # (n,) bool, CPU
    audio_present: torch.Tensor  # (n,) bool, CPU
    labels: torch.Tensor  # (n,) long
    labeled: torch.Tensor  # (n,) bool
    video: torch.Tensor  # (n,) long
    rows_per_rank: tuple[int, ...] | None = None  # under DDP: every process's share of the global batch


@dataclass
class HostBatch:
    """Windows as the cache stores them, on the host: faces (n, S, S, 3) uint8 and
    spectrograms (n, M, T) float16, 3 and 2 bytes a value instead of float32's 4 after
    normalisation. They cross to the device like that and are normalised there (``to``)."""

    faces: torch.Tensor | None
    specs: torch.Tensor | None
    visual_present: torch.Tensor
    audio_present: torch.Tensor
    labels: torch.Tensor
    labeled: torch.Tensor
    video: torch.Tensor
    audio_stats: tuple[float, float]
    rows_per_rank: tuple[int, ...] | None = None

    def pin_memory(self) -> "HostBatch":
        """Page-locked copies, so that copies to a GPU run asynchronously."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(self, faces=pin(self.faces), specs=pin(self.specs), labels=pin(self.labels),
                       labeled=pin(self.labeled), video=pin(self.video))  # fmt: skip

    def to(self, device, channels_last: bool = False) -> Batch:
        """Copy to ``device`` (asynchronously from pinned memory) and normalise there: faces
        to ImageNet statistics, spectrograms with the training windows' mean and deviation;
        absent rows are zero. ``channels_last``: the face tensor in that memory format."""
        device = torch.device(device)
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        visual = audio = None
        if self.faces is not None:
            # NHWC bytes seen as NCHW are channels-last already; contiguous NCHW costs one
            # copy of the bytes, before they become floats.
            x = move(self.faces).permute(0, 3, 1, 2)
            x = (x if channels_last else x.contiguous()).float()
            mean, std = _imagenet_stats(device)
            visual = _zero_absent(x.div_(255.0).sub_(mean).div_(std), self.visual_present)
        if self.specs is not None:
            # out of place: float32 spectrograms on the CPU would otherwise be normalised in the host batch itself
            audio = _zero_absent((move(self.specs).float() - self.audio_stats[0]) / self.audio_stats[1], self.audio_present)[:, None]
        return Batch(visual=visual, audio=audio, visual_present=self.visual_present, audio_present=self.audio_present,
                     labels=move(self.labels), labeled=move(self.labeled), video=move(self.video),
                     rows_per_rank=self.rows_per_rank)  # fmt: skip


def _zero_absent(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``x`` with the rows that ``present`` (a host mask) marks absent set to zero, in place;
    the row indices are found on the host, so the device is never waited for."""
    if not bool(present.all()):
        x.index_fill_(0, torch.nonzero(~present).flatten().to(x.device, non_blocking=True), 0.0)
    return x


@lru_cache(maxsize=None)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and deviation as (1, 3, 1, 1) tensors on ``device``, copied there once
    (a blocking copy per batch would make the host wait for the GPU)."""
    return tuple(torch.from_numpy(v).view(1, 3, 1, 1).to(device) for v in (IMAGENET_MEAN, IMAGENET_STD))


def device_batches(
    read: Callable[[np.ndarray], HostBatch], index_batches: list[np.ndarray], device, channels_last: bool = False, ahead: int = PREFETCH
) -> Iterator[Batch]:
    """``read(rows)`` for each of ``index_batches``, in order, as device batches.

    Background threads read up to ``ahead`` batches in advance (into pinned memory for a GPU)
    while the caller computes on the current one. Threads, not processes: the work is
    copying rows out of memory-mapped arrays, which numpy and torch do without the GIL, and
    threads share the maps without pickling batches between processes. The batches and their
    order are those of reading them one by one.
    """
    device = torch.device(device)
    pin = device.type == "cuda"
    load = (lambda rows: read(rows).pin_memory()) if pin else read
    if ahead <= 0:
        for rows in index_batches:
            yield load(rows).to(device, channels_last)
        return
    # A new thread's current GPU is 0: under torchrun every process would open a context there.
    on_start = (lambda: torch.cuda.set_device(device)) if pin and device.index is not None else None
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="avhgr-read", initializer=on_start) as pool:
        pending: deque = deque()
        try:
            for rows in index_batches:
                pending.append(pool.submit(load, rows))
                if len(pending) > ahead:
                    yield pending.popleft().result().to(device, channels_last)
            while pending:
                yield pending.popleft().result().to(device, channels_last)
        finally:  # the caller stopped early or a read failed: drop what is still queued
            for future in pending:
                future.cancel()


class WindowReader:
    """Reads batches of windows from the memory-mapped cache, as stored (``HostBatch``).

    Spectrograms are standardised with the mean and deviation of the training windows
    (``audio_stats``, kept in the checkpoint so prediction does the same).
    """

    def __init__(self, cache: Cache, audio_stats: tuple[float, float], modalities: tuple[str, ...] = ("audio", "visual")):
        self.cache = cache
        self.audio_mean, self.audio_std = audio_stats
        self.modalities = modalities
        w = cache.windows
        self.face_row, self.spec_row = w["face_row"], w["spec_row"]
        self.labels, self.video = w["label_idx"], w["video"]

    @staticmethod
    def audio_stats(cache: Cache, windows: np.ndarray, max_windows: int = 4000, seed: int = 0) -> tuple[float, float]:
        rows = cache.windows["spec_row"][windows]
        rows = np.sort(rows[rows >= 0])
        if len(rows) == 0:
            return 0.0, 1.0
        if len(rows) > max_windows:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_windows, replace=False))
        x = np.asarray(cache.spectrograms[rows], dtype=np.float32)
        return float(x.mean()), float(x.std() + 1e-6)

    def read(self, windows: np.ndarray, labeled_videos: set[int] | None = None) -> HostBatch:
        windows = np.asarray(windows)
        n = len(windows)
        face_rows, spec_rows = self.face_row[windows], self.spec_row[windows]
        faces = _rows(self.cache.faces, face_rows) if "visual" in self.modalities else None
        specs = _rows(self.cache.spectrograms, spec_rows) if "audio" in self.modalities else None
        videos = self.video[windows]
        labeled = np.ones(n, dtype=bool) if labeled_videos is None else np.isin(videos, list(labeled_videos))
        return host_batch(faces, specs, face_rows >= 0, spec_rows >= 0, (self.audio_mean, self.audio_std),
                          self.labels[windows], labeled, videos)  # fmt: skip


def host_batch(
    faces: np.ndarray | None,
    specs: np.ndarray | None,
    visual_present: np.ndarray,
    audio_present: np.ndarray,
    audio_stats: tuple[float, float],
    labels: np.ndarray | None = None,
    labeled: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> HostBatch:
    """Raw windows (faces (n, S, S, 3) uint8, spectrograms (n, M, T)) as a host batch; its
    ``to(device)`` gives the network inputs. The same code serves training and prediction."""
    n = len(visual_present)
    zeros = np.zeros(n, dtype=np.int64)
    tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))  # noqa: E731
    return HostBatch(
        faces=None if faces is None else tensor(faces, np.uint8),
        specs=None if specs is None else torch.from_numpy(np.ascontiguousarray(specs)),
        visual_present=tensor(visual_present, bool), audio_present=tensor(audio_present, bool),
        labels=tensor(labels if labels is not None else zeros, np.int64),
        labeled=tensor(labeled if labeled is not None else np.ones(n, bool), bool),
        video=tensor(videos if videos is not None else zeros, np.int64),
        audio_stats=audio_stats,
    )  # fmt: skip


def _rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``, with zeros where a row is -1 (the window lacks that modality)."""
    present = rows >= 0
    if present.all():
        return _gather(array, rows)
    out = np.zeros((len(rows), *array.shape[1:]), dtype=array.dtype)
    if present.any():
        out[present] = _gather(array, rows[present])
    return out


def _gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a memory-mapped array, read in ascending order (sequential disk access)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out


def windows_of(cache: Cache, videos: list[int], modality: str | None = None) -> np.ndarray:
    """Indices of the windows of ``videos`` (only those that have ``modality``, if given)."""
    w = cache.windows
    mask = np.isin(w["video"], videos)
    if modality == "visual":
        mask &= w["face_row"] >= 0
    elif modality == "audio":
        mask &= w["spec_row"] >= 0
    return np.flatnonzero(mask)
