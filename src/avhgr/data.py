"""From a cache to training batches: splits by video, the labelled subset, batch reading.

Splits are by video, never by window, and stratified by label:
  random  70 / 15 / 15 % of each class's videos (the paper's protocol)
  actor   whole subjects per part (no actor in two parts), about 15 % of subjects each for
          validation and test; the protocol peers use on RAVDESS
"""

from __future__ import annotations

import copy
import io
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from .cache import Cache
from .config import LEVELS
from .features import SPEECH_FLATNESS, SPEECH_LEVEL_DB, SPEECH_SHARE, has_speech

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREFETCH = 4  # batches read ahead of the one being computed
FACTS_FILE = "spectrogram_facts.npz"
FACTS_VERSION = f"1:{SPEECH_LEVEL_DB}:{SPEECH_FLATNESS}:{SPEECH_SHARE}:p95"  # computed again when these change


FOLD_SEED = 0  # the one shuffle that makes the folds (fold k of actor tests actors 03 and 10 of RAVDESS 1-12 for k = 0)


def split_videos(
    labels: dict[int, int], subjects: dict[int, str], method: str = "random", seed: int = 0, val: float = 0.15, test: float = 0.15,
    fold: int | None = None, folds: int = 6, partition: str = "fixed",
) -> dict[str, list[int]]:
    """The videos of train, validation and test.

    Without ``fold``: ``random`` puts 70 / 15 / 15 % of each class's videos (shuffled by ``seed``)
    in the three parts (the paper's protocol), ``actor`` whole subjects (about 15 % of them each for
    validation and test). With ``fold`` k: a cross-validation whose ``folds`` parts partition the
    subjects (``actor``) or each class's videos (``random``) once, whatever the seed (``partition``
    "fixed"): fold k tests on part k, validates on part k + 1 and trains on the rest, so folds
    0 .. folds-1 test every subject (or video) exactly once, and the seed changes only initialisation,
    window draws and batch order. ``partition`` "seeded" is how runs made before shuffled the parts
    by ``seed`` (their folds overlap across seeds); only their run folders need it."""
    if fold is not None and method not in ("actor", "random"):
        raise ValueError("--fold needs --split actor or random")
    if partition not in ("fixed", "seeded"):
        raise ValueError(f"unknown fold partition {partition!r}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    if method == "all":  # a final model, once cross-validation has chosen the settings
        return {"train": sorted(labels), "val": [], "test": []}
    fold_rng = np.random.default_rng(FOLD_SEED if partition == "fixed" else seed)

    def fold_groups(items: list, shuffle: np.random.Generator) -> dict:
        items = list(items)
        shuffle.shuffle(items)
        chunks = np.array_split(np.arange(len(items)), folds)
        part = {int(i): "test" for i in chunks[fold]} | {int(i): "val" for i in chunks[(fold + 1) % folds]}
        return {x: part.get(i, "train") for i, x in enumerate(items)}

    if method == "random":
        for label in sorted(set(labels.values())):
            vids = sorted(v for v, l in labels.items() if l == label)
            if fold is not None:
                if folds > len(vids):
                    raise ValueError(f"--folds {folds}: class {label} has only {len(vids)} videos")
                for v, where in fold_groups(vids, fold_rng).items():
                    parts[where].append(v)
                continue
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
        if fold is not None:
            if not 0 <= fold < folds or folds < 3 or folds > len(people):
                raise ValueError(f"--fold {fold} of --folds {folds}: need 0 <= fold < folds and 3 <= folds <= {len(people)} subjects")
            group = fold_groups(people, fold_rng)
        else:
            rng.shuffle(people)
            n_test = max(1, int(round(test * len(people))))
            n_val = max(1, int(round(val * len(people))))
            group = {p: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, p in enumerate(people)}
        for v in sorted(labels):
            parts[group[subjects[v]]].append(v)
    else:
        raise ValueError(f"unknown split {method!r}: random, actor or all")
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


ROW_MASKS = ("visual", "audio", "labeled")  # the columns of ``Rows``


@dataclass
class Rows:
    """Which rows of a batch have visual input, audio input and a label: one fact, kept where each
    user needs it. ``host`` (n, 3) bool stays on the CPU, so which rows go through each network is
    decided without waiting for the device; ``device`` is the same as floats on the compute
    device, the losses' row weights (copied with the batch, asynchronously from pinned memory)."""

    host: torch.Tensor  # (n, 3) bool, CPU: visual, audio, labeled
    device: torch.Tensor  # (n, 3) float on the compute device

    @classmethod
    def of(cls, visual, audio, labeled=None, device="cpu") -> "Rows":
        visual = torch.as_tensor(visual, dtype=torch.bool)
        labeled = torch.ones_like(visual) if labeled is None else torch.as_tensor(labeled, dtype=torch.bool)
        host = torch.stack([visual, torch.as_tensor(audio, dtype=torch.bool), labeled], dim=1).cpu()
        return cls(host, host.to(device).float())

    @property
    def visual(self) -> torch.Tensor:
        return self.host[:, 0]

    @property
    def audio(self) -> torch.Tensor:
        return self.host[:, 1]

    @property
    def labeled(self) -> torch.Tensor:
        return self.host[:, 2]

    def weight(self, *names: str) -> torch.Tensor:
        """(n,) float on the device: 1 where a row has every one of ``names`` (visual, audio, labeled)."""
        out = self.device[:, ROW_MASKS.index(names[0])]
        for name in names[1:]:
            out = out * self.device[:, ROW_MASKS.index(name)]
        return out


@dataclass
class Batch:
    """Network inputs on the compute device."""

    visual: torch.Tensor | None  # (n, 3, S, S) float, ImageNet-normalised
    audio: torch.Tensor | None  # (n, 1, M, T) float, standardised
    labels: torch.Tensor  # (n,) long
    video: torch.Tensor  # (n,) long
    rows: Rows  # which rows have each input and a label
    rows_per_rank: tuple[int, ...] | None = None  # under DDP: every process's share of the global batch

    @property
    def visual_present(self) -> torch.Tensor:
        return self.rows.visual

    @property
    def audio_present(self) -> torch.Tensor:
        return self.rows.audio


@dataclass
class HostBatch:
    """Windows as the cache stores them, on the host: face crops (n, S, S, 3) uint8 (or facial
    features (n, D) float32) and spectrograms (n, M, T) float16, 1 and 2 bytes a value instead of
    float32's 4 after normalisation. They cross to the device like that and are normalised there
    (``to``)."""

    visual: torch.Tensor | None
    specs: torch.Tensor | None
    rows: torch.Tensor  # (n, 3) bool: visual, audio, labeled (``Rows``)
    labels: torch.Tensor
    video: torch.Tensor
    audio_stats: tuple[float, float]
    spec_level: torch.Tensor | None = None  # (n,) dB subtracted from each spectrogram first (``level``)
    rows_per_rank: tuple[int, ...] | None = None
    visual_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # facial features: each column's mean and deviation

    def pin_memory(self) -> "HostBatch":
        """Page-locked copies, so that copies to a GPU run asynchronously."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(self, visual=pin(self.visual), specs=pin(self.specs), labels=pin(self.labels), video=pin(self.video),
                       spec_level=pin(self.spec_level), rows=pin(self.rows))  # fmt: skip

    def to(self, device, channels_last: bool = False) -> Batch:
        """Copy to ``device`` (asynchronously from pinned memory) and normalise there: faces
        to ImageNet statistics, facial features and spectrograms with the training windows' mean
        and deviation; absent rows are zero. ``channels_last``: the face tensor in that memory format."""
        device = torch.device(device)
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        host_rows = self.rows  # the masks stay on the host (pinned or not)
        visual = audio = None
        if self.visual is not None and self.visual.dim() == 2:  # facial features
            mean, std = (s.to(device) for s in self.visual_stats) if self.visual_stats is not None else (0.0, 1.0)
            visual = _zero_absent((move(self.visual).float() - mean) / std, host_rows[:, 0])
        elif self.visual is not None:
            # NHWC bytes seen as NCHW are channels-last already; contiguous NCHW costs one
            # copy of the bytes, before they become floats.
            x = move(self.visual).permute(0, 3, 1, 2)
            x = (x if channels_last else x.contiguous()).float()
            mean, std = _imagenet_stats(device)
            visual = _zero_absent(x.div_(255.0).sub_(mean).div_(std), host_rows[:, 0])
        if self.specs is not None:
            # out of place: float32 spectrograms on the CPU would otherwise be normalised in the host batch itself
            specs = move(self.specs).float()
            if self.spec_level is not None:
                specs = specs - move(self.spec_level)[:, None, None]
            audio = _zero_absent((specs - self.audio_stats[0]) / self.audio_stats[1], host_rows[:, 1])[:, None]
        return Batch(visual=visual, audio=audio, labels=move(self.labels), video=move(self.video),
                     rows=Rows(host_rows, move(self.rows).float()), rows_per_rank=self.rows_per_rank)  # fmt: skip


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


def level_offsets(specs: np.ndarray, level: str) -> np.ndarray:
    """Per window of one recording, the dB subtracted from its log-Mel spectrogram: 0
    (``absolute``), the recording's level (``recording``: a louder speaker or microphone no longer
    looks different), or the window's own level (``window``). A level is the 95th percentile of
    the dB values, which follows the voice's loudness and ignores pauses."""
    _check_level(level)
    x = np.asarray(specs, dtype=np.float32)
    if level == "absolute" or x.size == 0:
        return np.zeros(len(x), np.float32)
    if level == "window":
        return np.percentile(x.reshape(len(x), -1), 95, axis=1).astype(np.float32)
    return np.full(len(x), np.percentile(x, 95), np.float32)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")


def spectrogram_facts(cache: Cache) -> dict[str, np.ndarray]:
    """Per window of the cache: ``speech`` (``features.has_speech``), ``window`` and ``recording``
    (its own and its video's level, ``level_offsets``); 0 / False without audio. One pass over
    the spectrograms, kept beside the cache (``spectrogram_facts.npz``) for the next run."""
    from .cache import atomic_write_bytes

    path = cache.root / FACTS_FILE
    if path.exists():
        with np.load(path) as z:
            if str(z["version"]) == FACTS_VERSION and len(z["speech"]) == cache.num_windows:
                return {k: z[k] for k in ("speech", "window", "recording")}
    w = cache.windows
    facts = {"speech": np.zeros(cache.num_windows, bool), "window": np.zeros(cache.num_windows, np.float32),
             "recording": np.zeros(cache.num_windows, np.float32)}  # fmt: skip
    with_audio = np.flatnonzero(w["spec_row"] >= 0)
    order = with_audio[np.argsort(w["video"][with_audio], kind="stable")]
    for group in np.split(order, np.flatnonzero(np.diff(w["video"][order])) + 1):
        if len(group):
            specs = _gather(cache.spectrograms, w["spec_row"][group])
            facts["speech"][group] = has_speech(specs)
            facts["window"][group] = level_offsets(specs, "window")
            facts["recording"][group] = level_offsets(specs, "recording")
    buf = io.BytesIO()
    np.savez(buf, version=np.array(FACTS_VERSION), **facts)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only cache: computed again next time
        pass
    return facts


def spectrogram_levels(cache: Cache, level: str) -> np.ndarray:
    """``level_offsets`` of every window of the cache, each video as one recording."""
    _check_level(level)
    if level == "absolute":
        return np.zeros(cache.num_windows, np.float32)
    return spectrogram_facts(cache)[level]


def draw_windows(cache: Cache, windows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``k`` of each video's ``windows``, drawn at random without replacement (sorted).
    Where no video of the cache has more than ``k`` windows the draw would keep them all: the
    windows come back as given and ``rng`` is not used (training then runs exactly as with all)."""
    if k >= np.bincount(cache.windows["video"]).max(initial=0):
        return windows
    vids = cache.windows["video"][windows]
    order = np.lexsort((rng.random(len(windows)), vids))  # by video, in random order within each
    by_video = vids[order]
    rank = np.arange(len(order)) - np.searchsorted(by_video, by_video, side="left")
    return np.sort(windows[order[rank < k]])


class WindowReader:
    """Reads batches of windows from the memory-mapped cache, as stored (``HostBatch``).

    Spectrograms are level-normalised (``level``, see ``level_offsets``) and standardised
    with the mean and deviation of the training windows (``audio_stats``, from
    ``fit_audio_stats``; kept in the model card so prediction does the same).
    """

    def __init__(self, cache: Cache, audio_stats: tuple[float, float] = (0.0, 1.0),
                 modalities: tuple[str, ...] = ("audio", "visual"), level: str = "absolute", evidence: bool = False,
                 visual_stats: tuple | None = None):  # fmt: skip
        self.cache = cache
        self.audio_mean, self.audio_std = audio_stats
        self.visual_stats = None if visual_stats is None else tuple(np.asarray(s, np.float32) for s in visual_stats)
        self.modalities = modalities
        w = cache.windows
        self.face_row, self.spec_row = w["face_row"], w["spec_row"]
        self.labels, self.video = w["label_idx"], w["video"]
        self.level = level
        self.spec_level = spectrogram_levels(cache, level) if "audio" in modalities else None
        # Which windows have each input. With ``evidence``, a window whose own frame showed no face
        # has no visual input (not the nearest window's crop), one without speech no audio input.
        self.present = {"visual": self.face_row >= 0, "audio": self.spec_row >= 0}
        if evidence:
            self.present["visual"] = self.present["visual"] & (w["face_found"] == 1)
            self.present["audio"] = self.present["audio"] & spectrogram_facts(cache)["speech"]

    def dropping(self, drop: dict[int, str]) -> "WindowReader":
        """This reader with a modality taken away from some videos (``drop``: video -> "audio" or
        "visual"; the missing-modality study): their windows have no such input, in ``windows`` and
        ``read`` alike."""
        if not drop:
            return self
        out = copy.copy(self)
        out.present = dict(self.present)
        for modality in ("audio", "visual"):
            gone = np.isin(self.video, [v for v, m in drop.items() if m == modality])
            out.present[modality] = self.present[modality] & ~gone
        return out

    def windows(self, videos: list[int], modalities: tuple[str, ...] | None = None) -> np.ndarray:
        """The windows of ``videos`` that have at least one of ``modalities`` (default: this
        reader's): a visual network needs a face, the joint model either input."""
        mask = np.isin(self.video, videos)
        return np.flatnonzero(mask & np.logical_or.reduce([self.present[m] for m in modalities or self.modalities]))

    def fit_audio_stats(self, windows: np.ndarray, max_windows: int = 4000, seed: int = 0) -> tuple[float, float]:
        """Mean and deviation of the (level-normalised) spectrograms of ``windows`` (at most
        ``max_windows`` of them, drawn with ``seed``); the reader uses them from now on."""
        windows = windows[self.present["audio"][windows]]
        if len(windows) == 0:
            return self.audio_mean, self.audio_std
        if len(windows) > max_windows:
            windows = np.random.default_rng(seed).choice(windows, max_windows, replace=False)
        windows = windows[np.argsort(self.spec_row[windows])]
        x = _gather(self.cache.spectrograms, self.spec_row[windows]).astype(np.float32)
        if self.spec_level is not None:
            x -= self.spec_level[windows][:, None, None]
        self.audio_mean, self.audio_std = float(x.mean()), float(x.std() + 1e-6)
        return self.audio_mean, self.audio_std

    def fit_visual_stats(self, windows: np.ndarray) -> tuple[list[float], list[float]] | None:
        """Facial features (a cache made with ``--visual-features``): each column's mean and
        deviation over the training ``windows`` that have them (kept in the model card, as the
        spectrograms' are); the reader standardises with them from now on. None for face crops."""
        if self.cache.visual_features is None:
            return None
        rows = self.face_row[windows[self.present["visual"][windows]]]
        x = _gather(self.cache.visual, np.unique(rows)).astype(np.float64) if len(rows) else np.zeros((0, self.cache.visual.shape[1]))
        mean, std = (x.mean(0), x.std(0)) if len(x) else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = np.where(std > 1e-6, std, 1.0)  # a constant column stays as it is
        self.visual_stats = (mean.astype(np.float32), std.astype(np.float32))
        return [float(v) for v in mean], [float(v) for v in std]

    def read(self, windows: np.ndarray, labeled_videos: set[int] | None = None) -> HostBatch:
        windows = np.asarray(windows)
        n = len(windows)
        face_rows, spec_rows = self.face_row[windows], self.spec_row[windows]
        visual = _rows(self.cache.visual, face_rows) if "visual" in self.modalities else None
        specs = _rows(self.cache.spectrograms, spec_rows) if "audio" in self.modalities else None
        videos = self.video[windows]
        labeled = np.ones(n, dtype=bool) if labeled_videos is None else np.isin(videos, list(labeled_videos))
        level = None if specs is None or self.level == "absolute" else self.spec_level[windows]
        return host_batch(visual, specs, self.present["visual"][windows], self.present["audio"][windows],
                          (self.audio_mean, self.audio_std), self.labels[windows], labeled, videos, level, self.visual_stats)  # fmt: skip


def host_batch(
    visual: np.ndarray | None,
    specs: np.ndarray | None,
    visual_present: np.ndarray,
    audio_present: np.ndarray,
    audio_stats: tuple[float, float],
    labels: np.ndarray | None = None,
    labeled: np.ndarray | None = None,
    videos: np.ndarray | None = None,
    spec_level: np.ndarray | None = None,
    visual_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> HostBatch:
    """Raw windows (faces (n, S, S, 3) uint8 or facial features (n, D), spectrograms (n, M, T)) as
    a host batch; its ``to(device)`` gives the network inputs. The same code serves training and
    prediction."""
    n = len(visual_present)
    zeros = np.zeros(n, dtype=np.int64)
    tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))  # noqa: E731
    rows = np.stack([visual_present, audio_present, labeled if labeled is not None else np.ones(n, bool)], axis=1)
    features = visual is not None and np.asarray(visual).ndim == 2
    return HostBatch(
        visual=None if visual is None else tensor(visual, np.float32 if features else np.uint8),
        specs=None if specs is None else torch.from_numpy(np.ascontiguousarray(specs)),
        rows=tensor(rows, bool),
        labels=tensor(labels if labels is not None else zeros, np.int64),
        video=tensor(videos if videos is not None else zeros, np.int64),
        audio_stats=audio_stats,
        spec_level=None if spec_level is None else tensor(spec_level, np.float32),
        visual_stats=None if visual_stats is None or not features else tuple(tensor(s, np.float32) for s in visual_stats),
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
