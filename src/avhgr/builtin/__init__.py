"""The built-in speech model: audio only, six basic emotions, trained on RAVDESS speech.

Its files (``speech/model.safetensors``, float16, and ``speech/model.json``) and its model card
(``speech/MODEL_CARD.md``) ship inside the package; ``make model`` rebuilds them. The weights
are shared under RAVDESS's licence, CC BY-NC-SA 4.0 (see the model card).
"""

from __future__ import annotations

from pathlib import Path

from ..runs import RunError

SPEECH = Path(__file__).resolve().parent / "speech"


def builtin_model_dir() -> Path:
    if not (SPEECH / "model.json").exists() or not (SPEECH / "model.safetensors").exists():
        raise RunError(f"the built-in speech model is not in this installation ({SPEECH}); pass --model RUN, or build it with `make model`")
    return SPEECH
