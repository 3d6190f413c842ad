"""The networks: visual and audio ResNets with 512-d features, the label network and the fusion network.

Data flow of the joint model (method.md, "The networks"):

    face (3×S×S)   -> visual ResNet -> f (512) ─┐
    log-Mel (1×94×94, copied to 3 channels)     ├─ concat (1024) -> fusion MLP -> logits
                    -> audio ResNet  -> g (512) ─┘
    one-hot label   -> label FC      -> h (512)   (training only, for the correlation loss)

A missing modality's feature is set to exactly zero before the concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv_models

FEATURE_DIM = 512
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be had (offline machine, bad file)."""


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
        raise PretrainedWeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict of tensors")
    return state


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights: from its cache, else downloaded (fails clearly offline)."""
    weights = tv_models.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - URLError, socket errors, corrupt downloads
        raise PretrainedWeightsError(
            f"could not get ImageNet weights for {name} from torchvision ({type(exc).__name__}: {exc}). "
            "This machine may be offline: download them elsewhere and pass the file with "
            "--pretrained PATH, or use --pretrained none."
        ) from exc


def build_backbone(name: str = "resnet50", pretrained: str | Path | None = "none") -> nn.Module:
    """A torchvision ResNet whose last layer is a 512-unit linear layer (the feature f or g).

    ``pretrained``: "none", "imagenet" (torchvision's weights API) or a path to a local
    state dict of that ResNet (.pt/.pth via weights_only loading, or .safetensors). The
    ImageNet classifier ``fc.*`` is never loaded: that layer is replaced.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    net = getattr(tv_models, name)(weights=None)
    pretrained = "none" if pretrained is None else pretrained
    if str(pretrained) != "none":
        state = _imagenet_state_dict(name) if str(pretrained) == "imagenet" else _load_state_dict_file(Path(pretrained))
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise PretrainedWeightsError(
                f"{pretrained}: does not match {name} (missing {len(missing)} keys such as {missing[:3]}, "
                f"unexpected {len(unexpected)} such as {unexpected[:3]})"
            )
    net.fc = nn.Linear(net.fc.in_features, FEATURE_DIM)
    return net


class ModalityNet(nn.Module):
    """One modality's network: ResNet -> 512-d feature, plus a classifier head for stage 1."""

    def __init__(self, num_classes: int, backbone: str = "resnet50", pretrained: str | Path | None = "none"):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:  # a spectrogram: copy to the three channels the ResNet expects
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class FusionNet(nn.Module):
    """concat(f, g) -> `layers` × (Linear 512 + ReLU) -> Linear to the classes."""

    def __init__(self, num_classes: int, layers: int = 2, in_dim: int = 2 * FEATURE_DIM, hidden: int = FEATURE_DIM):
        super().__init__()
        if layers not in (1, 2, 4):
            raise ValueError(f"the paper's fusion network has 1, 2 or 4 hidden layers, got {layers}")
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x))


@dataclass
class JointOutput:
    logits: Tensor
    f: Tensor  # visual feature (zeros where the face is missing)
    g: Tensor  # audio feature (zeros where the audio is missing)
    h: Tensor | None  # label feature, only when labels were given


class AVHGRModel(nn.Module):
    """The joint model of stage 2: visual and audio networks, label network, fusion network."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        fusion_layers: int = 2,
        pretrained: str | Path | None = "none",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.visual = ModalityNet(num_classes, backbone, pretrained)
        self.audio = ModalityNet(num_classes, backbone, pretrained)
        self.label = nn.Linear(num_classes, FEATURE_DIM)
        self.fusion = FusionNet(num_classes, fusion_layers)

    @staticmethod
    def _features(net: ModalityNet, x: Tensor | None, present: Tensor | None, n: int, ref: Tensor) -> Tensor:
        """Features of the present rows only; absent rows stay exactly zero.

        Absent rows are not run through the network at all, so their (arbitrary) input
        never touches BatchNorm statistics. ``present`` is best a CPU tensor (as batches
        carry it): which rows to run is then decided without waiting for the device.
        """
        if x is None:
            return ref.new_zeros(n, FEATURE_DIM)
        if present is None:
            return net.features(x)
        present = present.to(dtype=torch.bool).cpu()
        if bool(present.all()):
            return net.features(x)
        out = ref.new_zeros(n, FEATURE_DIM)
        # SyncBatchNorm (DDP on GPUs) is a collective in forward and backward: a process whose
        # slice has no row of this modality must still run the network, on zero rows, and keep
        # it in the graph, or the others wait for it forever. Plain BatchNorm must not see an
        # empty batch (its running statistics would become NaN).
        if present.any() or (net.training and any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())):
            rows = torch.nonzero(present).flatten().to(x.device, non_blocking=True)
            feats = net.features(x.index_select(0, rows))
            out = out.to(feats.dtype).index_copy(0, rows, feats)
        return out

    def forward(
        self,
        visual: Tensor | None = None,
        audio: Tensor | None = None,
        labels: Tensor | None = None,
        visual_present: Tensor | None = None,
        audio_present: Tensor | None = None,
    ) -> JointOutput:
        """visual (n, 3, S, S), audio (n, 1|3, 94, 94): either may be None (missing for all rows)
        or masked per row by a boolean ``*_present``. ``labels`` (n,) class indices give h."""
        ref = visual if visual is not None else audio
        if ref is None:
            raise ValueError("AVHGRModel needs at least one of visual or audio")
        n = ref.shape[0]
        param = next(self.parameters())
        ref = torch.empty(0, device=ref.device, dtype=param.dtype)
        f = self._features(self.visual, visual, visual_present, n, ref)
        g = self._features(self.audio, audio, audio_present, n, ref)
        logits = self.fusion(torch.cat([f, g.to(f.dtype)], dim=1))
        h = None
        if labels is not None:
            h = self.label(F.one_hot(labels.long(), self.num_classes).to(param.dtype))
        return JointOutput(logits=logits, f=f, g=g, h=h)
