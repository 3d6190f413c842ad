"""The Python API: a model, and what it says about a recording.

    import avhgr

    model = avhgr.load_model()                  # the built-in model (face and voice experts)
    result = model.predict("clip.mp4", hop=0.5)
    result.emotion, result.probabilities, result.face_rate, result.speech_rate, result.reason
    result.timeline                             # a window every 0.5 s: start, end, emotion, probabilities, ...

    avhgr.load_model("runs/fgh")               # a run folder of `avhgr train`
    model.predict_many(["a.mp4", "b.wav"])     # a list of results (a file that cannot be read: an error result)
    model.predict_arrays(samples, 16000, frames, frame_times)   # media a program decoded itself

``avhgr predict`` prints what these return (``Prediction.to_dict`` is its ``--json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import RunError, UserError


@dataclass
class Prediction:
    """What a model says about one recording. ``emotion`` is None where no window had a face or
    speech the model can use (``reason`` says why); ``face_rate`` and ``speech_rate`` are the shares
    of windows with each (None where the model has no network for it)."""

    file: str
    model: str
    emotion: str | None
    probabilities: dict[str, float] | None
    reason: str | None
    windows: int
    windows_used: int
    face_rate: float | None
    speech_rate: float | None
    missing: list[str] = field(default_factory=list)
    timeline: list[dict] | None = None
    experts: dict[str, int] | None = None  # the built-in model: windows each expert answered
    features_matched: bool | None = None  # a model of facial features: whether the table had this file's row
    note: str | None = None
    error: str | None = None  # predict_many: why this file could not be read

    def to_dict(self) -> dict:
        """The JSON object of ``avhgr predict --json`` (keys that do not apply left out)."""
        d = asdict(self)
        for key in ("timeline", "experts", "features_matched", "note", "error"):
            if d[key] is None:
                d.pop(key)
        return d

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


FIELDS = {f for f in Prediction.__dataclass_fields__}


def as_prediction(result: dict) -> Prediction:
    return Prediction(**{k: v for k, v in result.items() if k in FIELDS})


class Model:
    """A loaded model (``load_model``): weights in memory once, any number of predictions."""

    def __init__(self, predictor):
        self._predictor = predictor

    @property
    def name(self) -> str:
        return self._predictor.name

    @property
    def description(self) -> str:
        return self._predictor.description

    @property
    def note(self) -> str | None:
        """What a user should know before trusting its answers (e.g. a feature table not given)."""
        return self._predictor.note

    @property
    def classes(self) -> list[str]:
        return list(self._predictor.classes)

    @property
    def modalities(self) -> list[str]:
        return list(self._predictor.modalities)

    def info(self) -> dict:
        """What the model is: its name, classes, inputs, windows, and (built-in) its experts."""
        from .builtin import describe, is_builtin

        p = self._predictor
        out = {"name": self.name, "description": self.description, "classes": self.classes, "inputs": self.modalities,
               "window_seconds": p.settings.window_seconds, "windows_per_file": p.settings.windows,
               "visual_input": p.card.get("visual_input", {"kind": "faces"}).get("kind")}  # fmt: skip
        if is_builtin(self.name):
            out["experts"] = describe(self.name)["experts"]
        return out

    def predict(self, path: str | Path, hop: float | None = None, timeline: bool | None = None, plot: str | Path | None = None) -> Prediction:
        """The emotion in one file. ``hop``: a window every ``hop`` seconds over the whole file (with a
        timeline); without it, random windows as in training. ``plot``: a PNG of each class's
        probability over time, with face thumbnails. ``timeline`` (default: with ``hop`` or ``plot``)
        keeps each window's answer in the result. Raises ``UserError`` (its message names the file)
        for a file that cannot be read."""
        keep = _keeps_timeline(hop, timeline, plot)
        if plot is None:
            return as_prediction(self._predictor.predict_file(path, timeline=keep, hop=hop))
        from .plots import timeline_png

        result, faces = self._predictor.predict_file(path, timeline=True, hop=hop, keep_faces=True)
        timeline_png(result["timeline"], self._predictor.classes, Path(plot), f"{Path(path).name}: {result['emotion'] or 'no emotion'}", faces,
                     self._predictor.settings.window_seconds)  # fmt: skip
        if not keep:
            result.pop("timeline")
        return as_prediction(result)

    def predict_many(self, paths, hop: float | None = None, timeline: bool | None = None) -> list[Prediction]:
        """``predict`` for each file; a file that cannot be read gives a result whose ``error`` says why."""
        out = []
        for path in paths:
            try:
                out.append(self.predict(path, hop, timeline))
            except UserError as exc:
                out.append(Prediction(file=str(path), model=self.description, emotion=None, probabilities=None, reason=None, windows=0,
                                      windows_used=0, face_rate=None, speech_rate=None, error=str(exc)))  # fmt: skip
        return out

    def predict_arrays(self, samples=None, sample_rate: int | None = None, frames=None, frame_times=None, hop: float | None = None,
                       timeline: bool | None = None) -> Prediction:  # fmt: skip
        """The emotion in media a program decoded itself: ``samples`` ((n,) or (n, channels), float in
        [-1, 1] or int16) at ``sample_rate`` Hz, and RGB ``frames`` ((H, W, 3) uint8) at ``frame_times``
        seconds (default 25 per second). Either may be None."""
        result = self._predictor.predict_arrays(samples, sample_rate, frames, frame_times, _keeps_timeline(hop, timeline), hop)
        return as_prediction(result)


def _keeps_timeline(hop, timeline: bool | None, plot=None) -> bool:
    """One rule for every predict call: each window's answer is kept when asked, else with a hop or a plot."""
    return (hop is not None or plot is not None) if timeline is None else timeline


def load_model(name: str | Path | None = None, device: str = "auto", visual_features: str | Path | None = None, windows: int | None = None) -> Model:
    """``None`` or ``"builtin"``: the built-in model (face and voice experts); ``"builtin:speech"`` or
    ``"builtin:face"``: one expert alone; else a run folder made by ``avhgr train``. A folder of seed
    runs (``train --runs N``) is refused in one line naming its runs. ``visual_features``: the table
    of a model trained on facial features. ``windows``: random windows per file when ``predict``
    has no ``hop`` (default: as many as the model's cache had)."""
    from .predict import Predictor

    return Model(Predictor(name, device, windows, visual_features))
