"""From a cache to training batches: splits by video, the labelled subset, batch reading.

Splits are by video, never by window, and stratified by label:
  random  70 / 15 / 15 % of each class's videos (the paper's protocol)
  actor   whole subjects per part (no actor in two parts), about 15 % of subjects each for
          validation and test; the protocol peers use on RAVDESS
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .cache import Cache

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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
    visual: torch.Tensor | None  # (n, 3, S, S) float, normalised
    audio: torch.Tensor | None  # (n, 1, M, T) float, standardised
    visual_present: torch.Tensor  # (n,) bool
    audio_present: torch.Tensor  # (n,) bool
    labels: torch.Tensor  # (n,) long
    labeled: torch.Tensor  # (n,) bool
    video: torch.Tensor  # (n,) long

    def to(self, device, channels_last: bool = False) -> "Batch":
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            visual=None if self.visual is None else self.visual.to(device, non_blocking=True, memory_format=fmt),
            audio=None if self.audio is None else self.audio.to(device, non_blocking=True, memory_format=fmt),
            visual_present=move(self.visual_present), audio_present=move(self.audio_present),
            labels=move(self.labels), labeled=move(self.labeled), video=move(self.video),
        )  # fmt: skip


class WindowReader:
    """Reads batches of windows from the memory-mapped cache and normalises them.

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

    def read(self, windows: np.ndarray, labeled_videos: set[int] | None = None) -> Batch:
        windows = np.asarray(windows)
        n = len(windows)
        face_rows, spec_rows = self.face_row[windows], self.spec_row[windows]
        faces = specs = None
        if "visual" in self.modalities:
            faces = np.zeros((n, *self.cache.faces.shape[1:]), dtype=np.uint8)
            if (face_rows >= 0).any():
                faces[face_rows >= 0] = _gather(self.cache.faces, face_rows[face_rows >= 0])
        if "audio" in self.modalities:
            specs = np.zeros((n, *self.cache.spectrograms.shape[1:]), dtype=np.float32)
            if (spec_rows >= 0).any():
                specs[spec_rows >= 0] = _gather(self.cache.spectrograms, spec_rows[spec_rows >= 0])
        videos = self.video[windows]
        labeled = np.ones(n, dtype=bool) if labeled_videos is None else np.isin(videos, list(labeled_videos))
        return make_batch(faces, specs, face_rows >= 0, spec_rows >= 0, (self.audio_mean, self.audio_std),
                          self.labels[windows], labeled, videos)  # fmt: skip


def make_batch(
    faces: np.ndarray | None,
    specs: np.ndarray | None,
    visual_present: np.ndarray,
    audio_present: np.ndarray,
    audio_stats: tuple[float, float],
    labels: np.ndarray | None = None,
    labeled: np.ndarray | None = None,
    videos: np.ndarray | None = None,
) -> Batch:
    """Raw windows -> network inputs: faces (n, S, S, 3) uint8 to ImageNet-normalised
    (n, 3, S, S); spectrograms (n, M, T) standardised with the training statistics to
    (n, 1, M, T). Absent rows are zero. The same code serves training and prediction."""
    n = len(visual_present)
    visual = audio = None
    if faces is not None:
        x = (faces.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        x[~visual_present] = 0.0
        visual = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if specs is not None:
        y = (np.asarray(specs, dtype=np.float32) - audio_stats[0]) / audio_stats[1]
        y[~audio_present] = 0.0
        audio = torch.from_numpy(np.ascontiguousarray(y[:, None]))
    zeros = np.zeros(n, dtype=np.int64)
    return Batch(
        visual=visual, audio=audio,
        visual_present=torch.from_numpy(np.asarray(visual_present, dtype=bool)),
        audio_present=torch.from_numpy(np.asarray(audio_present, dtype=bool)),
        labels=torch.from_numpy(np.asarray(labels if labels is not None else zeros, dtype=np.int64)),
        labeled=torch.from_numpy(np.asarray(labeled if labeled is not None else np.ones(n, bool), dtype=bool)),
        video=torch.from_numpy(np.asarray(videos if videos is not None else zeros, dtype=np.int64)),
    )  # fmt: skip


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
