"""The networks: visual and audio ResNets with 512-d features, the label network and the fusion network.

Every model takes a ``Batch`` and returns an ``Output`` (logits and its features): which input
goes to which network is decided here, once, and nowhere else.

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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv_models

from .config import BACKBONES, FEATURE_NORMS, MODALITIES
from .distributed import is_collective
from .errors import UserError

if TYPE_CHECKING:
    from .data import Batch

FEATURE_DIM = 512


class PretrainedWeightsError(UserError, RuntimeError):
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


@dataclass
class Output:
    """What every model returns: logits and the features it has (zeros where a modality is missing)."""

    logits: Tensor
    f: Tensor | None = None  # visual feature
    g: Tensor | None = None  # audio feature
    h: Tensor | None = None  # label feature: in training only, when the batch has labels


class FeatureNet(nn.Module):
    """The visual network over facial features (``--visual-features``: D numbers per window, such
    as OpenFace's action units) instead of face crops: a small MLP to the same 512-d feature, with
    dropout, since a corpus gives it a few hundred distinct vectors (one per recording)."""

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, FEATURE_DIM))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ModalityNet(nn.Module):
    """One modality's network: ResNet -> 512-d feature, plus a classifier head for stage 1.

    It knows its modality and takes its own input from a batch: the visual network the faces
    (or, with ``visual_features`` D, D facial features per window, through a ``FeatureNet``), the
    audio network the spectrograms.
    """

    def __init__(self, num_classes: int, modality: str, backbone: str = "resnet50", pretrained: str | Path | None = "none",
                 feature_dim: int | None = None):  # fmt: skip
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be audio or visual, got {modality!r}")
        self.modality = modality
        self.modalities = (modality,)  # the inputs a window must have to be used
        self.feature_dim = feature_dim if modality == "visual" else None
        self.backbone_name = backbone
        self.backbone = FeatureNet(feature_dim) if self.feature_dim else build_backbone(backbone, pretrained)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def input(self, batch: "Batch") -> Tensor:
        x = batch.audio if self.modality == "audio" else batch.visual
        if x is None:
            raise ValueError(f"the {self.modality} network was given a batch without {self.modality} input")
        return x

    def features(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] == 1:  # a spectrogram: copy to the three channels the ResNet expects
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)

    def freeze_unused(self, corr: str = "none", trains: str = "all") -> None:
        """Stage 1 trains every parameter."""
        self.requires_grad_(True)

    def forward(self, batch: "Batch") -> Output:
        feature = self.features(self.input(batch))
        return Output(self.head(feature), **{"g" if self.modality == "audio" else "f": feature})


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


class AVHGRModel(nn.Module):
    """The joint model of stage 2: visual and audio networks, label network, fusion network.

    ``feature_norm`` says what f and g are, for the fusion and for the correlation loss alike:

    - ``none``: the networks' 512 outputs (the paper).
    - ``batch``: those outputs standardised per dimension (BatchNorm without affine parameters,
      over the rows that have the modality) and divided by √512, so each feature has unit total
      variance: a Soft-HGR term of two such features over the rows they were standardised on is
      then within [-1.5, 1] (times n/(n-1)) whatever stage 1 did to the scale; over fewer rows (a
      term uses the rows that have both inputs) it is not bounded so, only kept near that scale.
    - ``rescale``: the outputs times a fixed α per modality, set at the start of stage 2
      (``calibrate``) to give unit total variance on the training windows; the fusion's first
      layer is divided by α, so the model computes the same function as with ``none``.
    A missing modality's feature is zero in all three.
    """

    modalities = MODALITIES  # a window needs either input; a missing one is zero

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        fusion_layers: int = 2,
        pretrained: str | Path | None = "none",
        feature_norm: str = "none",
        feature_dim: int | None = None,
    ):
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {feature_norm!r}")
        self.num_classes = num_classes
        self.feature_norm = feature_norm
        self.visual = ModalityNet(num_classes, "visual", backbone, pretrained, feature_dim)
        self.audio = ModalityNet(num_classes, "audio", backbone, pretrained)
        self.label = nn.Linear(num_classes, FEATURE_DIM)
        self.fusion = FusionNet(num_classes, fusion_layers)
        if feature_norm == "batch":
            self.norm = nn.ModuleDict({m: nn.BatchNorm1d(FEATURE_DIM, affine=False) for m in MODALITIES})
        if feature_norm == "rescale":
            self.register_buffer("scale", torch.ones(len(MODALITIES)))  # α of audio, visual

    def _normalise(self, modality: str, feats: Tensor) -> Tensor:
        if self.feature_norm == "batch":
            norm = self.norm[modality]
            # One row has no batch statistics: the running ones. Never under a global BatchNorm
            # (DDP), whose statistics are the global batch's and whose call is a collective.
            if norm.training and feats.shape[0] < 2 and not is_collective(norm):
                return F.batch_norm(feats, norm.running_mean, norm.running_var, training=False, eps=norm.eps) / FEATURE_DIM**0.5
            return norm(feats) / FEATURE_DIM**0.5
        if self.feature_norm == "rescale":
            return feats * self.scale[MODALITIES.index(modality)].to(feats.dtype)
        return feats

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """``rescale``: α per modality from the features of ``batches`` (training windows, in
        evaluation mode), and the fusion's first layer divided by α (the same function)."""
        if self.feature_norm != "rescale":
            return
        was_training = self.training
        self.eval()
        feats = {m: [] for m in MODALITIES}
        for batch in batches:
            for m, x, present in (("audio", batch.audio, batch.audio_present), ("visual", batch.visual, batch.visual_present)):
                if x is not None and bool(present.any()):
                    rows = torch.nonzero(present.cpu()).flatten().to(x.device)
                    feats[m].append(getattr(self, m).features(x.index_select(0, rows)).float())
        first = self.fusion.hidden[0]
        for i, m in enumerate(MODALITIES):
            if not feats[m]:
                continue
            total_variance = torch.cat(feats[m]).var(dim=0).sum().clamp(min=1e-12)
            alpha = total_variance.rsqrt() / self.scale[i]  # relative to the scale already applied
            self.scale[i] *= alpha
            cols = slice(0, FEATURE_DIM) if m == "visual" else slice(FEATURE_DIM, 2 * FEATURE_DIM)
            first.weight[:, cols] /= alpha
        self.train(was_training)

    @staticmethod
    def _features(net: ModalityNet, x: Tensor | None, present: Tensor | None, n: int, ref: Tensor, then=lambda t: t,
                  collective: bool = False) -> Tensor:  # fmt: skip
        """Features of the present rows only; absent rows stay exactly zero.

        Absent rows are not run through the network at all, so their (arbitrary) input
        never touches BatchNorm statistics. ``present`` is a CPU tensor (as batches carry it):
        which rows to run is then decided without waiting for the device. ``collective``: the
        network or ``then`` holds a global BatchNorm (DDP), a collective in forward and backward:
        a process whose slice has no row of this modality must still run them, on zero rows, and
        keep them in the graph, or the others wait for it forever.
        """
        if x is None:
            return ref.new_zeros(n, FEATURE_DIM)
        if present is None:
            return then(net.features(x))
        present = present.to(dtype=torch.bool).cpu()
        if bool(present.all()):
            return then(net.features(x))
        out = ref.new_zeros(n, FEATURE_DIM)
        # Plain BatchNorm must not see an empty batch (its running statistics would become NaN).
        if present.any() or collective:
            rows = torch.nonzero(present).flatten().to(x.device, non_blocking=True)
            feats = then(net.features(x.index_select(0, rows)))
            out = out.to(feats.dtype).index_copy(0, rows, feats)
        return out

    def _feature(self, modality: str, x: Tensor | None, present: Tensor | None, n: int, ref: Tensor) -> Tensor:
        """f or g: the present rows' features, normalised (``feature_norm``) over those rows only;
        absent rows zero. Whether a collective is in the path is decided here, per step, for every
        module of it: the network (a ResNet's BatchNorm) and the feature normalisation (an MLP over
        facial features has no BatchNorm, but ``feature_norm`` batch has one after it)."""
        net = self.visual if modality == "visual" else self.audio
        norm_collective = self.feature_norm == "batch" and is_collective(self.norm[modality])
        collective = self.training and (is_collective(net) or norm_collective)
        return self._features(net, x, present, n, ref, then=lambda feats: self._normalise(modality, feats), collective=collective)

    def freeze_unused(self, corr: str = "none", trains: str = "all") -> None:
        """Only what a stage trains learns: the stage-1 classifier heads play no part in the joint
        model, h only in L_corr^fgh; in the fusion warm-up (``trains`` "fusion") the stage-1
        networks wait too (their BatchNorm statistics still follow the batches)."""
        self.requires_grad_(True)
        self.visual.head.requires_grad_(False)
        self.audio.head.requires_grad_(False)
        self.label.requires_grad_(corr == "fgh")
        if trains == "fusion":
            self.visual.requires_grad_(False)
            self.audio.requires_grad_(False)

    def forward(self, batch: "Batch") -> Output:
        """The batch's faces (n, 3, S, S) and spectrograms (n, 1, 94, 94): either may be None
        (missing for all rows) or masked per row (``visual_present``, ``audio_present``).
        h, the label feature, is computed in training only (at test time the label is unknown)."""
        ref = batch.visual if batch.visual is not None else batch.audio
        if ref is None:
            raise ValueError("the joint model needs at least one of visual or audio input")
        n = ref.shape[0]
        param = next(self.parameters())
        ref = torch.empty(0, device=ref.device, dtype=param.dtype)
        f = self._feature("visual", batch.visual, batch.visual_present, n, ref)
        g = self._feature("audio", batch.audio, batch.audio_present, n, ref)
        logits = self.fusion(torch.cat([f, g.to(f.dtype)], dim=1))
        h = None
        if self.training and batch.labels is not None:
            h = self.label(F.one_hot(batch.labels.long(), self.num_classes).to(param.dtype))
        return Output(logits=logits, f=f, g=g, h=h)

    @classmethod
    def from_stage1(cls, nets: dict[str, ModalityNet], fusion_layers: int = 2, feature_norm: str = "none") -> "AVHGRModel":
        """The joint model, its visual and audio networks starting from stage 1's."""
        audio, visual = nets["audio"], nets["visual"]
        model = cls(audio.head.out_features, audio.backbone_name, fusion_layers, feature_norm=feature_norm,
                    feature_dim=visual.feature_dim)  # fmt: skip
        model.visual.load_state_dict(visual.state_dict())
        model.audio.load_state_dict(audio.state_dict())
        return model


class ProductModel(nn.Module):
    """Late fusion of two stage-1 networks, trained apart, with nothing trained on top: each
    window's answer is a product of experts over the inputs it has,

        log p(c) = 2w · log p_audio(c) + 2(1 − w) · log p_visual(c) + const,

    the audio network's term only where the window has speech, the visual one's only where it has
    a face (a window with one input gets that network's answer; with neither, uniform logits,
    and the evidence rule leaves it out). ``w`` = 0.5 is the plain product, the rule of the
    built-in model's experts. The comparison the joint model of the paper needs: the same two
    networks, combined without a fusion network that could learn to trust one of them."""

    modalities = MODALITIES  # a window needs either input

    def __init__(self, audio: ModalityNet, visual: ModalityNet, audio_weight: float = 0.5):
        super().__init__()
        if audio.modality != "audio" or visual.modality != "visual":
            raise ValueError(f"ProductModel takes an audio and a visual network, got {audio.modality} and {visual.modality}")
        if audio.head.out_features != visual.head.out_features:
            raise ValueError(f"the networks have {audio.head.out_features} and {visual.head.out_features} classes")
        if not 0 <= audio_weight <= 1:
            raise ValueError(f"audio_weight must be in [0, 1], got {audio_weight}")
        self.audio, self.visual, self.audio_weight = audio, visual, float(audio_weight)

    def log_probs(self, batch: "Batch") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Each network's log-probabilities over the batch's windows (zero where its input is not
        there) and which windows have each input: (audio, visual, has audio, has visual)."""
        ref = batch.audio if batch.audio is not None else batch.visual
        if ref is None:
            raise ValueError("the product model needs at least one of visual or audio input")
        n, out = ref.shape[0], []
        for net, x, present in ((self.audio, batch.audio, batch.audio_present), (self.visual, batch.visual, batch.visual_present)):
            logp = torch.zeros(n, self.audio.head.out_features, device=ref.device)
            has = torch.zeros(n, dtype=torch.bool) if x is None else present.to(torch.bool).cpu()
            rows = torch.nonzero(has).flatten()
            if len(rows):
                rows = rows.to(ref.device)
                logp.index_copy_(0, rows, torch.log_softmax(net.head(net.features(x.index_select(0, rows))).float(), dim=1))
            out.append((logp, has.to(ref.device)))
        return out[0][0], out[1][0], out[0][1], out[1][1]

    @staticmethod
    def combine(audio: Tensor, visual: Tensor, has_audio: Tensor, has_visual: Tensor, audio_weight: float = 0.5) -> Tensor:
        """The rule: logits from the networks' log-probabilities (``log_probs``), weighted where a
        window has both inputs, a network's own where it alone answers, zero where neither does."""
        both = (has_audio & has_visual)[:, None]
        a = torch.where(both, 2 * audio_weight, 1.0) * has_audio[:, None]
        v = torch.where(both, 2 * (1 - audio_weight), 1.0) * has_visual[:, None]
        return a * audio + v * visual

    def forward(self, batch: "Batch") -> Output:
        return Output(logits=self.combine(*self.log_probs(batch), self.audio_weight))


def build_model(card: dict) -> nn.Module:
    """The model a card (model.json) describes, with fresh weights."""
    classes, modalities = len(card["classes"]), tuple(card["modalities"])
    features = card.get("visual_input", {}).get("columns")
    dim = len(features) if features else None
    if len(modalities) == 2 and card.get("fusion") == "product":
        return ProductModel(ModalityNet(classes, "audio", card["backbone"]), ModalityNet(classes, "visual", card["backbone"], feature_dim=dim),
                            card["audio_weight"])  # fmt: skip
    if len(modalities) == 2:
        return AVHGRModel(classes, card["backbone"], card["fusion_layers"], feature_norm=card.get("feature_norm", "none"), feature_dim=dim)
    return ModalityNet(classes, modalities[0], card["backbone"], feature_dim=dim)
