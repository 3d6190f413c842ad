"""Video-level evaluation: window probabilities, video scores, metrics, and a finished run's test.

Depends on the models and the data, never on the training module: training validates with
the same functions, prediction reuses ``window_probabilities``.

The paper's missing-modality study (its Figure 7): a fraction ``rate`` of the test videos
lose their audio, their visual input, or (``both``) half of them one and half the other;
the missing feature is set to zero before fusion (method.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .cache import Cache
from .config import upgrade
from .data import WindowReader, device_batches
from .distributed import resolve_device
from .errors import RunError
from .models import ProductModel
from .precision import autocast, inference_amp
from .runs import RunFolder, load_model


@contextmanager
def channels_last(model: torch.nn.Module):
    """``model`` with its convolution weights channels-last for the duration: inference is faster
    so on CPUs and GPUs alike (a ResNet-18 on 94 x 94 spectrograms: 110 -> 192 windows/s in float32
    on a 2-core AVX2 CPU), while training on a CPU in float32 is slower so (57 -> 44)."""
    convs = [p for p in model.parameters() if p.dim() == 4]
    was = all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    if not was:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if not was:
            model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def window_probabilities(
    model: torch.nn.Module,
    reader,
    windows: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = False,
) -> np.ndarray:
    """Class probabilities of each window; ``reader.read(rows)`` gives host batches."""
    model.eval()
    out = []
    chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    with channels_last(model):
        for batch in device_batches(reader.read, chunks, device, channels_last=True):
            with autocast(device, amp):
                logits = model(batch).logits
            out.append(torch.softmax(logits.float(), dim=1))  # stays on the device: one copy at the end
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


class ProductAnswers:
    """The two networks of a ``ProductModel``, each run once over ``windows``: the product's window
    probabilities at any audio weight and under any reader that takes inputs away from some of
    those windows (``WindowReader.dropping``, the missing-modality study), without running the
    networks again. They equal ``window_probabilities`` of ``ProductModel(audio, visual, w)``."""

    def __init__(self, model, reader: WindowReader, windows: np.ndarray, device, amp: bool = False, batch_size: int = 256):
        self.windows = np.unique(windows)  # sorted: a window's row is found by searchsorted
        answers = []
        model.eval()
        with torch.no_grad(), channels_last(model):
            chunks = [self.windows[i : i + batch_size] for i in range(0, len(self.windows), batch_size)]
            for batch in device_batches(reader.read, chunks, device, channels_last=True):
                with autocast(device, amp):
                    answers.append([t.float().cpu() for t in model.log_probs(batch)[:2]])
        self.audio, self.visual = (torch.cat([a[k] for a in answers]) for k in (0, 1)) if answers else (torch.zeros(0), torch.zeros(0))

    def probabilities(self, reader: WindowReader, windows: np.ndarray, audio_weight: float) -> np.ndarray:
        """The product's probabilities of ``windows`` as ``reader`` feeds them: each network's answer
        where that reader has its input (a reader may only take inputs away, never add them)."""
        rows = np.searchsorted(self.windows, windows)
        if len(windows) and (rows.max() >= len(self.windows) or not np.array_equal(self.windows[rows], windows)):
            raise ValueError("ProductAnswers: asked for windows it did not answer")
        has = [torch.from_numpy(reader.present[m][windows]) for m in ("audio", "visual")]
        return torch.softmax(ProductModel.combine(self.audio[rows], self.visual[rows], *has, audio_weight), dim=1).numpy()


def video_scores(probs: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean window probability per video: (video ids, (n_videos, C))."""
    ids, inverse = np.unique(videos, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    return ids, sums / counts


def metrics(probs: np.ndarray, windows: np.ndarray, cache: Cache, videos: list[int] | None = None) -> dict:
    """Window and video accuracy, per-class accuracy and the confusion matrix. ``videos``: the
    videos judged; one without any usable window (no face and no speech) gets no prediction and
    counts as wrong (``videos_without_evidence``; it is left out of the confusion matrix)."""
    labels_w = cache.windows["label_idx"][windows]
    vids, vprobs = video_scores(probs, cache.windows["video"][windows]) if len(windows) else (np.zeros(0, int), None)
    all_labels = cache.video_labels()
    vlabels = np.array([all_labels[int(v)] for v in vids], dtype=int)
    vpred = vprobs.argmax(1) if len(vids) else np.zeros(0, int)
    silent = sorted(set(int(v) for v in videos) - set(int(v) for v in vids)) if videos is not None else []
    n_videos = len(vids) + len(silent)
    c = len(cache.classes)
    confusion = np.zeros((c, c), dtype=int)
    np.add.at(confusion, (vlabels, vpred), 1)
    per_class = {}
    for k in range(c):
        total = confusion[k].sum() + sum(all_labels[v] == k for v in silent)
        per_class[cache.classes[k]] = float(confusion[k, k] / total) if total else None
    return {
        "video_accuracy": float((vpred == vlabels).sum() / n_videos) if n_videos else float("nan"),
        "window_accuracy": float((probs.argmax(1) == labels_w).mean()) if len(windows) else float("nan"),
        "videos": int(n_videos),
        "videos_without_evidence": len(silent),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "predictions": [{"video": int(v), "label": int(l), "pred": int(p)} for v, l, p in zip(vids, vlabels, vpred)]
        + [{"video": v, "label": all_labels[v], "pred": None} for v in silent],
    }


def evaluate_videos(model, reader: WindowReader, cache: Cache, videos: list[int], device, batch_size=256, drop=None, amp=False) -> dict:
    """Metrics of ``model`` on ``videos``, with each prediction's path and class names. ``drop``
    maps a video to the modality it misses at test time ("audio" or "visual"): that feature is
    zero, and a window left with neither input adds nothing, as one without evidence."""
    reader = reader.dropping(drop or {})
    windows = reader.windows(videos, model.modalities)
    m = metrics(window_probabilities(model, reader, windows, device, batch_size, amp), windows, cache, videos)
    names = {v["id"]: v["path"] for v in cache.videos}
    for p in m["predictions"]:
        p["path"] = names[p["video"]]
        p["label"], p["pred"] = cache.classes[p["label"]], None if p["pred"] is None else cache.classes[p["pred"]]
    return m


def missing_assignment(videos: list[int], missing: str | None, rate: float | None = None, seed: int = 0) -> dict[int, str]:
    """Which test videos miss which modality: a seeded choice of round(rate · n) videos
    (``rate`` None: every video, the modality is simply absent)."""
    if missing is None:
        if rate:
            raise RunError("--rate needs --missing (audio, visual or both)")
        return {}
    if missing not in ("audio", "visual", "both"):
        raise RunError(f"--missing must be audio, visual or both; got {missing}")
    rate = 1.0 if rate is None else rate
    if not 0 <= rate <= 1:
        raise RunError(f"--rate must be in [0, 1]; got {rate}")
    rng = np.random.default_rng(seed + 104729)
    chosen = [int(v) for v in rng.permutation(sorted(videos))[: int(round(rate * len(videos)))]]
    if missing == "both":
        half = len(chosen) // 2
        return {v: ("audio" if i < half else "visual") for i, v in enumerate(chosen)}
    return {v: missing for v in chosen}


def ids_of_test_videos(run: RunFolder, data: Cache) -> list[int]:
    """The run's test videos as ids of ``data``, found by path: a cache made again (or another
    cache of the same videos) numbers them differently. Refuses a cache that lacks any of them."""
    wanted = [e["path"] for e in run.split()["test"]]
    if not wanted:
        raise RunError(f"{run.path}: trained on every video (--split all), so it has no test videos to evaluate")
    ids = {v["path"]: v["id"] for v in data.videos}
    absent = [p for p in wanted if p not in ids]
    if absent:
        raise RunError(f"{data.root}: {len(absent)} of the run's {len(wanted)} test videos are not in this cache "
                       f"(e.g. {absent[0]}); evaluate on the cache the run was trained on, or one made from the same videos")  # fmt: skip
    made_with = run.config().get("cache_settings", {})
    if list(data.classes) != list(made_with.get("classes", data.classes)):
        raise RunError(f"{data.root}: its classes {data.classes} are not the run's")
    if made_with and made_with.get("visual_features") != data.settings.get("visual_features"):
        raise RunError(f"{data.root}: its visual input ({'facial features' if data.settings.get('visual_features') else 'face crops'}) "
                       "is not what the run was trained on")  # fmt: skip
    if "features" in made_with and data.settings["features"] != made_with["features"]:
        differ = [k for k in made_with["features"] if data.settings["features"].get(k) != made_with["features"][k]]
        raise RunError(f"{data.root}: made with other feature settings than the run's cache ({', '.join(differ)})")
    return [ids[p] for p in wanted]


def evaluate_run(run: str | Path, cache: str | Path | None = None, missing: str | None = None, rate: float | None = None,
                 seed: int = 0, device: str = "auto", model=None, card=None) -> dict:  # fmt: skip
    missing_assignment([], missing, rate)  # the settings, checked before anything is loaded
    folder = RunFolder(run)
    config = folder.config()["train"]
    dev = resolve_device(device)
    if model is None:
        model, card = load_model(run, dev)
    data = Cache.open(cache or config["cache"])
    test = ids_of_test_videos(folder, data)
    reader = WindowReader(data, tuple(card["audio_stats"]), tuple(card["modalities"]), card.get("level", "absolute"), card.get("evidence", False),
                          card.get("visual_input", {}).get("stats"))  # fmt: skip
    drop = missing_assignment(test, missing, rate, seed)
    result = evaluate_videos(model, reader, data, test, dev, drop=drop, amp=inference_amp(upgrade(config).get("amp"), dev))
    result.update(missing=missing, rate=(1.0 if rate is None else rate) if missing else 0.0, videos_missing=len(drop))
    return result


def evaluate_missing(run: str | Path, scenarios=("audio", "visual", "both"), rates=(0.25, 0.5, 0.75), seed: int = 0, device: str = "auto",
                     cache: str | Path | None = None) -> dict[tuple[str, float], dict]:  # fmt: skip
    """``evaluate_run`` of a run for every (scenario, rate) at once, each with ``missing_assignment``'s
    videos: the windows' probabilities are computed once with both inputs, once without audio and
    once without the visual input, and each scenario takes each video's windows from the one its
    assignment says, so a sweep costs three passes over the test videos instead of one per cell."""
    for scenario in scenarios:
        missing_assignment([], scenario, rates[0] if rates else None)  # the settings, checked first
    folder = RunFolder(run)
    config = upgrade(folder.config()["train"])
    dev = resolve_device(device)
    model, card = load_model(run, dev)
    data = Cache.open(cache or config["cache"])
    test = ids_of_test_videos(folder, data)
    reader = WindowReader(data, tuple(card["audio_stats"]), tuple(card["modalities"]), card.get("level", "absolute"), card.get("evidence", False),
                          card.get("visual_input", {}).get("stats"))  # fmt: skip
    return missing_sweep(model, reader, data, test, dev, inference_amp(config.get("amp"), dev), scenarios, rates, seed)


def missing_sweep(model, reader: WindowReader, data: Cache, test: list[int], dev, amp: bool = False, scenarios=("audio", "visual", "both"),
                  rates=(0.25, 0.5, 0.75), seed: int = 0, probabilities=None) -> dict[tuple[str, float], dict]:  # fmt: skip
    """``evaluate_missing``'s sweep for a model in memory and the reader that feeds it (``test``: the
    video ids judged). ``probabilities(reader, windows)``, where given, gives the model's window
    probabilities without running it (answers computed once, for many sweeps)."""
    probabilities = probabilities or (lambda r, windows: window_probabilities(model, r, windows, dev, 256, amp))
    passes = {}
    for gone in (None, "audio", "visual"):
        r = reader.dropping({v: gone for v in test}) if gone else reader
        windows = r.windows(test, model.modalities)
        passes[gone] = (windows, probabilities(r, windows))
    names = {v["id"]: v["path"] for v in data.videos}
    out = {}
    for scenario in scenarios:
        for rate in rates:
            drop = missing_assignment(test, scenario, rate, seed)
            parts = []
            for gone, (windows, probs) in passes.items():
                videos = data.windows["video"][windows]
                keep = np.array([drop.get(int(v)) == gone for v in videos], dtype=bool)
                parts.append((windows[keep], probs[keep]))
            windows = np.concatenate([w for w, _ in parts])
            probs = np.concatenate([p for _, p in parts]) if windows.size else np.zeros((0, len(data.classes)), np.float32)
            m = metrics(probs, windows, data, test)
            for p in m["predictions"]:
                p["path"] = names[p["video"]]
                p["label"], p["pred"] = data.classes[p["label"]], None if p["pred"] is None else data.classes[p["pred"]]
            m.update(missing=scenario, rate=rate, videos_missing=len(drop))
            out[(scenario, rate)] = m
    return out
