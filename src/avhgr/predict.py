"""From a raw media file (or a live stream, ``watch``) to emotion probabilities, with the
preprocessing training used.

A run folder's ``model.json`` says how the model was trained (classes, modalities, feature
settings, spectrogram statistics); ``model.safetensors`` holds the weights (no code runs on
load). Without a run, the built-in speech model shipped in the package is used (``builtin``).

Evidence, not guesses: a window whose own frame shows no face has no visual input, a window
without speech (``features.has_speech``) no audio input; the missing feature is zero, the
paper's own mechanism. This holds for every model, also one trained without ``evidence`` (the
paper's recipe), whose ``avhgr evaluate`` follows its training instead. A window with neither adds nothing to the file's result, and a file in
which no window has what the model needs gets no emotion (``emotion`` None, with a reason).
The file's emotion is the mean of its usable windows' class probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .data import host_batch, level_offsets
from .distributed import resolve_device
from .evaluate import window_probabilities
from .errors import RunError
from .features import FeatureSettings, has_speech
from .precision import inference_amp
from .preprocess import make_cropper, process_arrays, process_file
from .runs import load_model

PREDICT_BATCH = 64  # windows per forward pass


@dataclass
class Windows:
    """One file's (or stream's) windows, as the networks will see them."""

    starts: np.ndarray  # (n,) seconds
    visual: np.ndarray | None  # face crops (n, S, S, 3) uint8, or facial features (n, D); None without visual input
    specs: np.ndarray | None  # (n, n_mels, frames) dB, None without an audio track
    face: np.ndarray  # (n,) bool: a face was found in the window's own frame (its features, with a feature table)
    speech: np.ndarray  # (n,) bool: the window has speech


class Predictor:
    def __init__(self, run: str | Path | None = None, device: str = "auto", windows: int | None = None,
                 visual_features: str | Path | None = None):  # fmt: skip
        """``run``: a run folder, or None for the built-in speech model. ``windows``: how many random
        windows to look at per file (default: as in training); more gives a denser look at long
        videos, at a proportional cost. ``visual_features``: the feature table (a CSV, or a folder
        of OpenFace CSVs) for a model trained on facial features instead of face crops; without
        it such a model's visual input is missing, and ``note`` says so."""
        if windows is not None and windows < 1:
            raise RunError(f"windows must be at least 1, not {windows}")
        self.device = resolve_device(device)
        from .builtin import is_builtin, load_builtin

        self.name = str(run) if run is not None else "builtin"
        if is_builtin(run):
            self.model, card, self.description = load_builtin(run, self.device)
        else:
            refuse_seed_folder(Path(run))
            self.model, card = load_model(run, self.device)
            self.description = f"model {run}"
        self.card = card
        self.amp = inference_amp(card.get("amp"), self.device)  # the run's precision where this device computes it natively
        self.classes: list[str] = card["classes"]
        self.modalities: list[str] = card["modalities"]
        self.audio_stats = tuple(card["audio_stats"])
        self.level = card.get("level", "absolute")
        self.settings = FeatureSettings(**card["features"])
        if windows is not None:
            self.settings = replace(self.settings, windows=windows)
        self._cropper = None
        visual_input = card.get("visual_input", {"kind": "faces"})
        self.features, self.feature_stats, self.note = None, visual_input.get("stats"), None
        if visual_input["kind"] == "features" and "visual" in self.modalities:
            self.description += ", audio + facial features"
            if visual_features is None:
                self.note = "the model looks at facial features and no --visual-features table was given: its visual input is missing"
            else:
                from .visual_features import open_table

                self.features = open_table(visual_features, match="end", columns=visual_input["columns"])  # a file anywhere whose path ends in a row's file
                if self.features.columns != visual_input["columns"]:
                    raise RunError(f"{visual_features}: its feature columns ({', '.join(self.features.columns[:4])} ...) are not the "
                                   f"model's ({', '.join(visual_input['columns'][:4])} ...)")  # fmt: skip
        elif visual_features is not None:
            raise RunError(f"--visual-features {visual_features}: this model looks at face crops, not at facial features")

    @property
    def cropper(self):
        if self._cropper is None:  # MTCNN only when a file has video
            self._cropper = make_cropper(self.settings, str(self.device))
        return self._cropper

    # ---- the shared core: windows -> probabilities

    def presence(self, w: Windows) -> tuple[np.ndarray, np.ndarray]:
        """Per window, whether the model gets visual and audio input (evidence only)."""
        visual = w.face & (w.visual is not None) & ("visual" in self.modalities)
        audio = w.speech & (w.specs is not None) & ("audio" in self.modalities)
        return visual, audio

    @torch.no_grad()
    def probabilities(self, w: Windows, levels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) class probabilities (NaN where a window has nothing the model uses) and the mask
        of usable windows. ``levels``: each spectrogram's level offset (default: the file's)."""
        n = len(w.starts)
        visual, audio = self.presence(w)
        used = visual | audio
        probs = np.full((n, len(self.classes)), np.nan, np.float32)
        rows = np.flatnonzero(used)
        self.expert_probs = None  # this file's experts only: never the previous file's
        if not len(rows):
            if hasattr(self.model, "trace"):  # the built-in model: no expert answered any window
                c = len(self.classes)
                self.expert_probs = {"face": np.full((n, c), np.nan, np.float32), "voice": np.full((n, c), np.nan, np.float32),
                                     "face_neutral": np.full(n, np.nan, np.float32)}  # fmt: skip
            return probs, used
        faces = w.visual if "visual" in self.modalities else None
        specs = w.specs if "audio" in self.modalities else None
        if "visual" in self.modalities and faces is None:
            shape = (len(self.feature_stats[0]),) if self.feature_stats else (self.settings.face_size, self.settings.face_size, 3)
            faces = np.zeros((n, *shape), np.float32 if self.feature_stats else np.uint8)
        if "audio" in self.modalities and specs is None:
            specs = np.zeros((n, self.settings.n_mels, self.settings.spec_frames), np.float32)
        if specs is not None and levels is None:
            levels = level_offsets(specs, self.level)
        # The windows, read like a cache by the evaluation loop (batches: activations stay small).
        reader = SimpleNamespace(read=lambda r: host_batch(
            None if faces is None else faces[r], None if specs is None else specs[r], visual[r], audio[r], self.audio_stats,
            spec_level=None if specs is None else levels[r], visual_stats=self.feature_stats))  # fmt: skip
        experts = hasattr(self.model, "trace")  # the built-in model: keep what each expert said
        if experts:
            self.model.trace = []
        probs[rows] = window_probabilities(self.model, reader, rows, self.device, PREDICT_BATCH, self.amp)
        if experts:
            self.expert_probs = {k: np.full((n, *np.shape(self.model.trace[0][k])[1:]), np.nan, np.float32) for k in self.model.trace[0]}
            for k in self.expert_probs:
                self.expert_probs[k][rows] = np.concatenate([t[k] for t in self.model.trace])
            self.model.trace = None
        return probs, used

    # ---- a file

    def windows_of_file(self, path: str | Path, hop: float | None = None) -> tuple[Windows, dict]:
        """Raises MediaError for a file that cannot be used (its message names the file)."""
        needs_video = "visual" in self.modalities
        cropper = _LazyCropper(self) if needs_video and self.feature_stats is None else None
        raw = process_file(path, self.settings, cropper, key=Path(path).name, hop=hop, features=self.features)
        if self.features is not None:
            raw["meta"]["features_matched"] = bool(raw["meta"]["has_video"])
        return self._windows(raw)

    def windows_of_arrays(self, samples, sample_rate, frames=None, frame_times=None, hop: float | None = None) -> tuple[Windows, dict]:
        """``windows_of_file`` for decoded media (``preprocess.process_arrays``)."""
        if self.feature_stats is not None:
            raise RunError("this model looks at facial features of a table: give it files (their rows are found by name), not arrays")
        cropper = _LazyCropper(self) if "visual" in self.modalities else None
        try:
            raw = process_arrays(samples, sample_rate, frames, frame_times, self.settings, cropper, hop)
        except ValueError as exc:
            raise RunError(str(exc)) from exc
        return self._windows(raw)

    def _windows(self, raw: dict) -> tuple[Windows, dict]:
        needs_video = "visual" in self.modalities
        n = len(raw["starts"])
        specs = raw.get("specs")
        if self.feature_stats is not None and self.features is None:
            raw["meta"]["has_video"] = False  # a model of facial features without their table: no visual input (``note``)
        visual = raw.get("visual") if needs_video else None
        w = Windows(starts=raw["starts"], visual=visual, specs=specs,
                    face=raw["face_found"] if visual is not None else np.zeros(n, bool),
                    speech=has_speech(specs) if specs is not None else np.zeros(n, bool))  # fmt: skip
        return w, raw["meta"]

    def predict_file(self, path: str | Path, timeline: bool = False, hop: float | None = None, keep_faces: bool = False):
        """The file's emotion (None when no window has a face or speech the model can use).
        ``keep_faces``: also return the windows' face crops in time order (for a plot)."""
        if hop is not None and hop <= 0:
            raise RunError(f"--hop must be positive, not {hop}")
        w, meta = self.windows_of_file(path, hop)
        return self.result_of(str(path), w, meta, timeline, keep_faces)

    def predict_arrays(self, samples=None, sample_rate=None, frames=None, frame_times=None, timeline: bool = False, hop: float | None = None,
                       name: str = "<arrays>") -> dict:  # fmt: skip
        """``predict_file`` for decoded media: audio ``samples`` at ``sample_rate``, RGB ``frames`` at ``frame_times``."""
        if hop is not None and hop <= 0:
            raise RunError(f"hop must be positive, not {hop}")
        w, meta = self.windows_of_arrays(samples, sample_rate, frames, frame_times, hop)
        return self.result_of(name, w, meta, timeline)

    def result_of(self, name: str, w: Windows, meta: dict, timeline: bool = False, keep_faces: bool = False):
        probs, used = self.probabilities(w)
        result = self.summary(name, w, probs, used, meta)
        if "features_matched" in meta:
            result["features_matched"] = meta["features_matched"]
            if not meta["features_matched"]:
                result["note"] = "no row of the feature table names this file: its visual input is missing"
        if timeline:
            result["timeline"] = self.timeline(w, probs)
        if keep_faces:
            crops = w.visual if w.visual is not None and w.visual.ndim == 4 else None  # face crops, not facial features
            return result, None if crops is None else crops[np.argsort(w.starts, kind="stable")]
        return result

    def summary(self, name: str, w: Windows, probs: np.ndarray, used: np.ndarray, meta: dict) -> dict:
        has_video, has_audio = bool(meta["has_video"]), bool(meta["has_audio"])
        result = {
            "file": name,
            "model": self.description,
            "emotion": None,
            "probabilities": None,
            "reason": None,
            "windows": int(len(w.starts)),
            "windows_used": int(used.sum()),
            # None where the model has no network for it (the built-in model never looks for faces)
            "face_rate": round(float(w.face.mean()), 4) if has_video and len(w.starts) and "visual" in self.modalities else None,
            "speech_rate": round(float(w.speech.mean()), 4) if has_audio and len(w.starts) and "audio" in self.modalities else None,
            "missing": [m for m, ok in (("visual", has_video), ("audio", has_audio)) if not ok and m in self.modalities],
        }
        experts = getattr(self, "expert_probs", None)
        if experts is not None:  # the built-in model: how many windows each expert answered
            result["experts"] = {name: int((~np.isnan(experts[name][:, 0])).sum()) for name in ("face", "voice")}
        if self.note:
            result["note"] = self.note
        if used.any():
            mean = probs[used].mean(axis=0)
            result["emotion"] = self.classes[int(mean.argmax())]
            result["probabilities"] = {c: round(float(p), 4) for c, p in zip(self.classes, mean)}
        else:
            result["reason"] = self.no_evidence_reason(has_video, has_audio)
        return result

    def no_evidence_reason(self, has_video: bool, has_audio: bool) -> str:
        parts = []
        if "visual" in self.modalities:
            parts.append("no face was found" if has_video else "it has no video")
        if "audio" in self.modalities:
            parts.append("no speech was heard" if has_audio else "it has no audio")
        return " and ".join(parts) + f" ({self.description}: it needs {' or '.join(self.modalities)})"

    def timeline(self, w: Windows, probs: np.ndarray) -> list[dict]:
        out = []
        experts = getattr(self, "expert_probs", None)
        as_dict = lambda row: None if row is None or np.isnan(row).any() else {c: round(float(p), 4) for c, p in zip(self.classes, row)}  # noqa: E731
        for i in np.argsort(w.starts, kind="stable"):
            ok = not np.isnan(probs[i, 0])
            entry = {"start": round(float(w.starts[i]), 3), "end": round(float(w.starts[i] + self.settings.window_seconds), 3),
                     "emotion": self.classes[int(probs[i].argmax())] if ok else None,
                     "probability": round(float(probs[i].max()), 4) if ok else None,
                     "probabilities": {c: round(float(p), 4) for c, p in zip(self.classes, probs[i])} if ok else None,
                     "face": bool(w.face[i]) if "visual" in self.modalities else None,
                     "speech": bool(w.speech[i]) if "audio" in self.modalities else None}  # fmt: skip
            if experts is not None:  # which experts answered, and what each said
                face, voice = as_dict(experts["face"][i]), as_dict(experts["voice"][i])
                entry["experts"] = [name for name, said in (("face", face), ("voice", voice)) if said is not None]
                entry["face_expert"], entry["voice_expert"] = face, voice
                neutral = experts["face_neutral"][i]
                entry["face_neutral"] = None if np.isnan(neutral) else round(float(neutral), 4)
            out.append(entry)
        return out


def refuse_seed_folder(folder: Path) -> None:
    """A folder of seed runs (``train --runs N``) is not one model: say in one line which to give."""
    if (folder / "model.json").exists():
        return
    seeds = sorted(p.parent.name for p in folder.glob("*/model.json"))
    if seeds:
        raise RunError(f"{folder}: a folder of {len(seeds)} runs ({', '.join(seeds[:3])}{' ...' if len(seeds) > 3 else ''}), not one model: "
                       f"give one of them, e.g. --model {folder / seeds[0]}")  # fmt: skip


class _LazyCropper:
    """Stands for the predictor's cropper, creating it (loading MTCNN) on first use."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __getattr__(self, name):
        return getattr(self.predictor.cropper, name)
