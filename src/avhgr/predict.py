"""From a raw video file to emotion probabilities, with the preprocessing training used.

A run folder's ``model.json`` says how the model was trained (classes, modalities, feature
settings, spectrogram statistics); ``model.safetensors`` holds the weights (no code runs on
load). The video-level prediction is the mean of the windows' class probabilities.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .data import host_batch, level_offsets
from .distributed import resolve_device
from .evaluate import window_probabilities
from .features import FeatureSettings
from .preprocess import make_cropper, process_file
from .runs import RunError, load_model


PREDICT_BATCH = 64  # windows per forward pass


class Predictor:
    def __init__(self, run: str | Path, device: str = "auto", windows: int | None = None):
        """``windows``: how many random windows to look at per file (default: as in training);
        more gives a denser timeline on long videos, at a proportional cost."""
        if windows is not None and windows < 1:
            raise RunError(f"windows must be at least 1, not {windows}")
        self.device = resolve_device(device)
        self.model, card = load_model(run, self.device)
        self.classes: list[str] = card["classes"]
        self.modalities: list[str] = card["modalities"]
        self.audio_stats = tuple(card["audio_stats"])
        self.level = card.get("level", "absolute")
        self.settings = FeatureSettings(**card["features"])
        if windows is not None:
            self.settings = replace(self.settings, windows=windows)
        self._cropper = None

    @property
    def cropper(self):
        if self._cropper is None:  # MTCNN only when a file has video
            self._cropper = make_cropper(self.settings, str(self.device))
        return self._cropper

    @torch.no_grad()
    def predict_file(self, path: str | Path, timeline: bool = False) -> dict:
        """Raises MediaError for a file that cannot be used (message names the file)."""
        windows = process_file(path, self.settings, _LazyCropper(self), key=Path(path).name)
        n = len(windows["starts"])
        has_video, has_audio = windows["meta"]["has_video"], windows["meta"]["has_audio"]
        used_video = has_video and "visual" in self.modalities
        used_audio = has_audio and "audio" in self.modalities
        if not used_video and not used_audio:
            raise RunError(f"{path}: has no {' or '.join(self.modalities)} track, which this model needs")
        faces = windows.get("faces") if "visual" in self.modalities else None
        specs = windows.get("specs") if "audio" in self.modalities else None
        if "visual" in self.modalities and faces is None:
            faces = np.zeros((n, self.settings.face_size, self.settings.face_size, 3), np.uint8)
        if "audio" in self.modalities and specs is None:
            specs = np.zeros((n, self.settings.n_mels, self.settings.spec_frames), np.float32)
        # The file's windows, read like a cache by the evaluation loop (batches: activations stay
        # small however many windows).
        levels = level_offsets(specs, self.level) if specs is not None else None
        reader = SimpleNamespace(read=lambda rows: host_batch(
            None if faces is None else faces[rows], None if specs is None else specs[rows],
            np.full(len(rows), used_video), np.full(len(rows), used_audio), self.audio_stats,
            spec_level=None if levels is None else levels[rows]))  # fmt: skip
        probs = window_probabilities(self.model, reader, np.arange(n), self.device, PREDICT_BATCH)
        mean = probs.mean(axis=0)
        missing = [m for m, used in (("visual", has_video), ("audio", has_audio)) if not used]
        result = {
            "file": str(path),
            "emotion": self.classes[int(mean.argmax())],
            "probabilities": {c: round(float(p), 4) for c, p in zip(self.classes, mean)},
            "windows": n,
            "missing": missing,
            "face_found_rate": float(windows["face_found"].mean()) if has_video else None,
        }
        if timeline:
            order = np.argsort(windows["starts"])
            result["timeline"] = [
                {"start": round(float(windows["starts"][i]), 3), "end": round(float(windows["starts"][i] + self.settings.window_seconds), 3),
                 "emotion": self.classes[int(probs[i].argmax())], "probability": round(float(probs[i].max()), 4)}
                for i in order
            ]  # fmt: skip
        return result


class _LazyCropper:
    """Stands for the predictor's cropper, creating it (loading MTCNN) on first use."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __getattr__(self, name):
        return getattr(self.predictor.cropper, name)
