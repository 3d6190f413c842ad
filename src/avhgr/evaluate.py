"""Video-level evaluation of a trained run on its test videos, with missing modalities.

The paper's missing-modality study (its Figure 7): a fraction ``rate`` of the test videos
lose their audio, their visual input, or (``both``) half of them one and half the other;
the missing feature is set to zero before fusion (method.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import Cache
from .data import WindowReader, windows_of
from .predict import load_model
from .train import RunError, metrics, resolve_device, window_probabilities


def missing_assignment(videos: list[int], missing: str | None, rate: float, seed: int = 0) -> dict[int, str]:
    """Which test videos miss which modality: a seeded choice of round(rate · n) videos."""
    if not missing or rate <= 0:
        return {}
    if missing not in ("audio", "visual", "both"):
        raise RunError(f"--missing must be audio, visual or both; got {missing}")
    if not 0 <= rate <= 1:
        raise RunError(f"--rate must be in [0, 1]; got {rate}")
    rng = np.random.default_rng(seed + 104729)
    chosen = [int(v) for v in rng.permutation(sorted(videos))[: int(round(rate * len(videos)))]]
    if missing == "both":
        half = len(chosen) // 2
        return {v: ("audio" if i < half else "visual") for i, v in enumerate(chosen)}
    return {v: missing for v in chosen}


def evaluate_run(run: str | Path, cache: str | Path | None = None, missing: str | None = None, rate: float = 0.0,
                 seed: int = 0, device: str = "auto", model=None, card=None) -> dict:  # fmt: skip
    run = Path(run)
    try:
        config = json.loads((run / "config.json").read_text())["train"]
        split = json.loads((run / "split.json").read_text())
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise RunError(f"{run}: not a finished avhgr run ({exc})") from exc
    dev = resolve_device(device)
    if model is None:
        model, card = load_model(run, dev)
    data = Cache.open(cache or config["cache"])
    test = [e["id"] for e in split["test"]]
    modalities = tuple(card["modalities"])
    reader = WindowReader(data, tuple(card["audio_stats"]), modalities)
    windows = windows_of(data, test, modalities[0] if len(modalities) == 1 else None)
    drop = missing_assignment(test, missing, rate, seed)
    probs = window_probabilities(model, reader, windows, dev, drop=drop, amp=dev.type == "cuda")
    result = metrics(probs, windows, data)
    result.update(missing=missing, rate=rate, videos_missing=len(drop))
    return result
