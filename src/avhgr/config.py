"""Every setting of a training run in one place: what it does, which recipe fills it, and what it
is part of.

A setting's ``metadata`` says what it is part of, and every list the rest of the code needs is
derived from it:

- ``stage1``: what a stage-1 network depends on besides the cache and the split; a run may start
  from another run's stage 1 (``--init-from``) only where these agree (``STAGE1_SETTINGS``).
- ``warmup``: what the fusion warm-up depends on besides stage 1; an HGR run takes the baseline's
  warm-up only where these agree too (``WARMUP_SETTINGS``).
- ``free``: where a run computes, not what (``RESUME_FREE``): it may differ on ``--resume``.
- ``legacy``: the value a run made before the setting existed had in effect (``upgrade``).

The two recipes: ``paper`` is the paper's literal training; ``avhgr`` (the default) our measured
choices (docs/training.md). A recipe fills every setting left at ``None``; a cache of facial
features (``preprocess --visual-features``) gets the ``avhgr`` settings that the real-data
comparison chose for it (``FEATURE_RECIPE``, docs/results.md). Any setting given explicitly
overrides its recipe. A setting that would do nothing for this run (``--lam`` on an audio-only
run, ``--feature-noise`` on face crops) is refused, not ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import RunError

MODALITIES = ("audio", "visual")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
FEATURE_NORMS = ("none", "batch", "rescale")
LEVELS = ("absolute", "recording", "window")
CORRS = ("fgh", "fg", "none")
SPLITS = ("random", "actor", "all")
# The paper's study grids (the studies' defaults): fusion depths and λ of the stability grid, the
# share of test videos missing a modality, the share of training videos labelled.
PAPER_LAYERS = (1, 2, 4)
PAPER_LAMS = (0.01, 0.1, 1.0, 10.0)
PAPER_RATES = (0.0, 0.2, 0.5, 0.8)
PAPER_FRACTIONS = (0.2, 0.5, 0.8, 1.0)
# `study --quick`: a smoke version (one seed, one epoch per stage, a ResNet-18, a reduced grid).
QUICK_STUDY = dict(runs=1, epochs=1, joint_epochs=1, backbone="resnet18", batch_size=32,
                   layers=(1, 2), lams=(0.1, 1.0), fractions=(0.5, 1.0), rates=(0.0, 0.5))  # fmt: skip
SCHEDULES = ("constant", "cosine")
FUSION_LAYERS = (1, 2, 4)
FUSIONS = ("network", "product")
# What only stage 2 (the fusion network's training) uses: None where a run has no stage 2 (one
# modality, or --fusion product), so that a recipe's default for it changing later does not make a
# finished run look as if it had other settings.
STAGE2_SETTINGS = ("corr", "lam", "fusion_layers", "feature_norm", "fusion_warmup", "lam_warmup", "joint_lr", "joint_epochs", "joint_windows",
                   "modality_dropout")  # fmt: skip


def setting(default=None, help: str = "", *, stage1: bool = False, warmup: bool = False, free: bool = False, legacy=MISSING):
    """A TrainConfig field with what it does (``help``, the CLI's text) and what it is part of."""
    return field(default=default, metadata={"help": help, "stage1": stage1, "warmup": warmup or stage1, "free": free, "legacy": legacy})


@dataclass
class TrainConfig:
    # -- the data and the run folder
    cache: str = setting(help="A cache made by `avhgr preprocess`.")
    out: str = setting(help="The run folder (with --runs N: a folder of N seed runs).")
    modalities: tuple[str, ...] = setting(MODALITIES, "audio, visual or audio,visual: the networks trained.")
    split: str = setting("random", "random (by video, the paper's), actor (no subject in two parts) or all (every video trains).", stage1=True)
    fold: int | None = setting(None, "With a split: fold K of a cross-validation (test part K, validation part K+1).", stage1=True)
    folds: int = setting(6, "Parts of the cross-validation (with --fold).", stage1=True)
    # Folds partition the subjects (actor) or videos (random) once, the same for every seed; runs made
    # before that shuffled them by seed.
    fold_partition: str = setting("fixed", stage1=True, legacy="seeded")
    labeled_fraction: float = setting(1.0, "Share of the training videos that keep their labels (semi-supervised).", stage1=True)
    seed: int = setting(0, "Seed of initialisation, window draws and batch order (never of which videos are tested).", stage1=True)
    init_from: str | None = setting(None, "A run whose stage-1 networks (and fusion warm-up, where it matches) start this one.")
    # -- the recipe (None: filled by it)
    recipe: str = setting("avhgr", "avhgr (our measured choices) or paper (the paper's literal training).")
    backbone: str | None = setting(None, "ResNet of each network: resnet18, resnet34, resnet50 (the paper's) or resnet101.", stage1=True)
    pretrained: str = setting("none", "none, imagenet (torchvision's weights; needs the network) or a local weights file.", stage1=True)
    epochs: int | None = setting(None, "Stage 1 (each network alone, CE): epochs; also a unimodal model's.", stage1=True)
    joint_epochs: int | None = setting(None, "Stage 2 (joint, CE + λ·L_corr): epochs after the fusion warm-up.", legacy=None)
    batch_size: int | None = setting(None, "Windows per training batch.", stage1=True)
    lr: float = setting(1e-3, "Learning rate (Adam or AdamW).", stage1=True)
    weight_decay: float | None = setting(None, "Decoupled weight decay (AdamW); 0: Adam.", stage1=True)
    schedule: str | None = setting(None, "Learning rate within each stage: constant or cosine.", stage1=True)
    windows_per_epoch: int | str | None = setting(None, "Windows per video each stage-1 epoch: all cached ones, or N drawn anew.", stage1=True)
    joint_windows: int | str | None = setting(None, "Windows per video each stage-2 (and warm-up) epoch: all, or N drawn anew.", warmup=True, legacy=None)
    val_windows: int | str | None = setting(None, "Windows per validation video: all cached ones, or the first N (the test always uses all).",
                                            stage1=True, legacy="all")  # fmt: skip
    spec_augment: bool | None = setting(None, "Mel shifts and SpecAugment masks on training spectrograms.", stage1=True)
    face_augment: bool | None = setting(None, "Random flips and light crops of training faces (face crops only).", stage1=True)
    feature_noise: float | None = setting(None, "Facial features only: deviation of the noise added to them in training.", stage1=True, legacy=0.0)
    level: str | None = setting(None, "Spectrogram level: absolute, recording or window (each window's own loudness removed).", stage1=True)
    evidence: bool | None = setting(None, "Windows without a found face have no visual input, without speech no audio input.", stage1=True)
    amp: bool | None = setting(None, "bf16 autocast (default: where the device computes bf16 natively; precision.default_amp).", stage1=True)
    # -- how the two networks are combined
    fusion: str | None = setting(None, "network (the paper's fusion network, trained in stage 2) or product (the stage-1 networks' answers "
                                       "multiplied per window; no stage 2).", legacy="network")  # fmt: skip
    audio_weight: float | None = setting(None, "--fusion product: the audio network's weight w where a window has both inputs "
                                               "(p ∝ p_audio^2w · p_visual^2(1-w); 0.5: the plain product).", legacy=None)  # fmt: skip
    # -- stage 2
    corr: str | None = setting(None, "The correlation loss: fgh, fg, or none (the paper's baseline: CE alone).")
    lam: float | None = setting(None, "λ, the weight of L_corr against CE.")
    fusion_layers: int | None = setting(None, "Hidden layers of the fusion network: 1, 2 or 4.", warmup=True)
    feature_norm: str | None = setting(None, "What f and g are for fusion and L_corr: none (raw), batch (standardised) or rescale.", warmup=True)
    fusion_warmup: int | None = setting(None, "Epochs before stage 2 in which only the fusion network learns (CE alone).", warmup=True)
    lam_warmup: int | None = setting(None, "Epochs over which λ grows from 0 at the start of stage 2.")
    joint_lr: float | None = setting(None, "Learning rate of the warm-up and stage 2 (default: --lr).", warmup=True)
    modality_dropout: float | None = setting(None, "Warm-up and stage 2: share of training windows that lose one of their inputs.",
                                             warmup=True, legacy=0.0)  # fmt: skip
    # -- where it runs (not what it computes)
    device: str = setting("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N.", free=True)
    keep_states: bool = setting(False, "Keep the resume states (*.resume.pt, ~3x the weights) once the run is done.", free=True)
    eval_batch_size: int = setting(256, "Windows per batch in validation and test.", free=True)
    # The recipe-filled settings that were given explicitly (computed at construction; kept by replace()).
    given: frozenset | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise RunError(f"--recipe must be {' or '.join(RECIPES)}; got {self.recipe}")
        if self.given is None:
            self.given = frozenset(k for k in RECIPES["paper"] if getattr(self, k) is not None)
        kind = cache_kind(self.cache)
        recipe = RECIPES[self.recipe] | (FEATURE_RECIPE if kind == "features" and self.recipe == "avhgr" else {})
        for key, value in recipe.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.amp is None:
            from .precision import default_amp

            self.amp = default_amp(self.device)
        self.modalities = tuple(sorted(set(self.modalities), key=MODALITIES.index))
        for key in ("windows_per_epoch", "joint_windows", "val_windows"):
            value = getattr(self, key)
            if isinstance(value, str) and value.isdigit():
                setattr(self, key, int(value))
        if self.joint_windows == "same":
            self.joint_windows = self.windows_per_epoch
        if self.fold is None:
            self.fold_partition = "fixed"  # no folds: nothing to partition
        self._validate()
        if kind is not None:
            self.refuse_noops(kind)
        # What cannot matter to this run is recorded as None, so that a recipe's default for it
        # changing later does not make a finished run look as if it had other settings.
        for key in nothing_to(self.to_json()):
            setattr(self, key, None)

    def _validate(self) -> None:
        def choice(key: str, allowed) -> None:
            if getattr(self, key) not in allowed:
                raise RunError(f"--{key.replace('_', '-')} must be one of {', '.join(map(str, allowed))}; got {getattr(self, key)}")

        for key, allowed in (("feature_norm", FEATURE_NORMS), ("schedule", SCHEDULES), ("level", LEVELS), ("backbone", BACKBONES), ("fusion", FUSIONS),
                             ("corr", CORRS), ("split", SPLITS), ("fusion_layers", FUSION_LAYERS), ("fold_partition", ("fixed", "seeded"))):  # fmt: skip
            choice(key, allowed)
        if not self.modalities or any(m not in MODALITIES for m in self.modalities):
            raise RunError(f"--modalities must be audio, visual or audio,visual; got {','.join(self.modalities)}")
        if not 0 <= self.audio_weight <= 1:
            raise RunError(f"--audio-weight must be in [0, 1]; got {self.audio_weight}")
        if not 0 <= self.modality_dropout < 1:
            raise RunError(f"--modality-dropout must be in [0, 1); got {self.modality_dropout}")
        if self.batch_size < 2:
            raise RunError(f"--batch-size must be at least 2 (Soft-HGR and BatchNorm need two rows); got {self.batch_size}")
        for key in ("lam_warmup", "fusion_warmup", "weight_decay", "epochs", "joint_epochs", "feature_noise", "lam"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise RunError(f"--{key.replace('_', '-')} must not be negative; got {getattr(self, key)}")
        if self.joint_lr is not None and not self.joint_lr > 0:
            raise RunError(f"--joint-lr must be positive (leave it out for the same rate as --lr); got {self.joint_lr}")
        for key in ("windows_per_epoch", "joint_windows", "val_windows"):
            value = getattr(self, key)
            if value != "all" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise RunError(f"--{key.replace('_', '-')} must be all or a number of windows (at least 1); got {value}")
        if not 0 < self.labeled_fraction <= 1:
            raise RunError(f"--labeled-fraction must be in (0, 1]; got {self.labeled_fraction}")
        if self.fold is not None and self.split == "all":
            raise RunError("--fold needs --split actor or random (--split all trains on every video: there is nothing to hold out)")
        if self.fold is not None and not (3 <= self.folds and 0 <= self.fold < self.folds):
            raise RunError(f"--fold {self.fold} of --folds {self.folds}: need 0 <= fold < folds and at least 3 folds")

    def refuse_noops(self, kind: str) -> None:
        """Refuse, in one line, a setting given explicitly that would do nothing for this run
        (``kind``: the cache's visual input, "faces" or "features")."""
        given = lambda key: key in self.given or (key == "joint_lr" and self.joint_lr is not None)  # noqa: E731  # joint_lr: no recipe fills it
        if len(self.modalities) == 1:
            one = f"{'an' if self.modalities[0] == 'audio' else 'a'} {self.modalities[0]}-only run"
            why = lambda k: f"{one} has one network: nothing to combine" if k in ("fusion", "audio_weight") else f"{one} has no stage 2"  # noqa: E731
        elif self.fusion == "product":
            why = lambda k: "--fusion product trains no stage 2"  # noqa: E731
        else:
            why = lambda k: ("it weighs the networks of --fusion product, and this run trains a fusion network" if k == "audio_weight"  # noqa: E731
                             else "--corr none trains without L_corr")  # fmt: skip
        noop = [(k, why(k)) for k in nothing_to(self.to_json()) if given(k)]
        if given("feature_noise") and self.feature_noise and ("visual" not in self.modalities or kind == "faces"):
            noop.append(("feature_noise", "it applies to facial features, and this run has none"))
        if given("face_augment") and self.face_augment and ("visual" not in self.modalities or kind == "features"):
            noop.append(("face_augment", "it applies to face crops, and this run has none"))
        if given("spec_augment") and self.spec_augment and "audio" not in self.modalities:
            noop.append(("spec_augment", "a visual-only run has no spectrograms"))
        if given("level") and "audio" not in self.modalities:
            noop.append(("level", "a visual-only run has no spectrograms"))
        if noop:
            key, why = noop[0]
            raise RunError(f"--{key.replace('_', '-')} would do nothing here ({why}); leave it out")

    @property
    def stage1_epochs(self) -> int:
        return self.epochs

    def lr_at(self, stage, epoch: int) -> float:
        """The learning rate of an epoch of a stage."""
        base = self.joint_lr if stage.name.startswith("stage2") and self.joint_lr is not None else self.lr
        if self.schedule == "cosine":
            return base * 0.5 * (1 + math.cos(math.pi * epoch / max(stage.epochs, 1)))
        return base

    def lam_at(self, epoch: int, step: int, steps: int) -> float:
        """λ at a step of stage 2: linear from 0 over ``lam_warmup`` epochs, then constant (0 without L_corr)."""
        if not self.lam:
            return 0.0
        if not self.lam_warmup:
            return self.lam
        return self.lam * min(1.0, (epoch + step / max(steps, 1)) / self.lam_warmup)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("given")
        d["modalities"] = list(self.modalities)
        return d


# Every setting a recipe fills. joint_windows "same": as windows_per_epoch.
RECIPES = {
    "paper": dict(backbone="resnet50", epochs=100, joint_epochs=100, feature_norm="none", lam_warmup=0, fusion_warmup=0, weight_decay=0.0,
                  schedule="constant", windows_per_epoch="all", joint_windows="same", val_windows="all", spec_augment=False,
                  face_augment=False, level="absolute", evidence=False, feature_noise=0.0, modality_dropout=0.0, batch_size=90, corr="fgh",
                  lam=1.0, fusion_layers=2, fusion="network", audio_weight=0.5),
    "avhgr": dict(backbone="resnet18", epochs=12, joint_epochs=2, feature_norm="batch", lam_warmup=0, fusion_warmup=1, weight_decay=0.05,
                  schedule="cosine", windows_per_epoch=20, joint_windows="same", val_windows=20, spec_augment=True, face_augment=True,
                  level="window", evidence=True, feature_noise=0.0, modality_dropout=0.0, batch_size=64, corr="fgh", lam=1.0,
                  fusion_layers=2, fusion="network", audio_weight=0.5),
}  # fmt: skip
# A cache of facial features: what the real-data comparison chose for the avhgr recipe (docs/results.md):
# feature noise and 5 windows per recording in stage 2 as it ran; one fusion layer, which validation
# chose in 13 of its 18 units (λ = 1, the recipe's, was fgh's most frequent choice: 9 of 18).
FEATURE_RECIPE = dict(feature_noise=0.5, joint_windows=5, fusion_layers=1)

STAGE1_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("stage1"))
WARMUP_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("warmup"))
RESUME_FREE = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("free"))
HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig) if "help" in f.metadata}


def nothing_to(train: dict) -> tuple[str, ...]:
    """The settings that do nothing for a run with these settings (recorded as None): stage 2's
    for one modality or ``--fusion product``, the fusion for one modality, λ without L_corr, the
    audio weight without the product."""
    if len(train.get("modalities", MODALITIES)) == 1:
        return (*STAGE2_SETTINGS, "fusion", "audio_weight")
    if train.get("fusion") == "product":
        return STAGE2_SETTINGS
    return ("audio_weight",) + (("lam", "lam_warmup") if train.get("corr") == "none" else ())


def cache_kind(cache: str | Path) -> str | None:
    """"faces" or "features" (a cache of facial features), from the cache's settings.json; None
    where there is no cache there (yet)."""
    try:
        settings = json.loads((Path(cache) / "settings.json").read_text())
    except (OSError, ValueError):
        return None
    return "features" if settings.get("visual_features") else "faces"


def upgrade(train: dict) -> dict:
    """A config.json's training settings as today's settings: a run made before a setting existed
    had in effect what ``legacy`` says, and before stage 2 had its own epochs, ``epochs`` counted
    stage 2's and ``pretrain_epochs`` stage 1's."""
    out = dict(train)
    if "joint_epochs" not in out and "epochs" in out:
        out["joint_epochs"] = out["epochs"]
        stage1 = out.pop("pretrain_epochs", None)
        out["epochs"] = out["epochs"] if stage1 is None else stage1
    out.pop("pretrain_epochs", None)
    if "stage2_lr" in out:
        out["joint_lr"] = out.pop("stage2_lr")
    for f in fields(TrainConfig):
        if f.name not in out and f.metadata.get("legacy", MISSING) is not MISSING:
            out[f.name] = f.metadata["legacy"]
    if out.get("joint_windows") is None and "windows_per_epoch" in out:
        out["joint_windows"] = out["windows_per_epoch"]
    if out.get("fold") is None:
        out["fold_partition"] = "fixed"
    for key in nothing_to(out):  # what cannot matter to it is None (TrainConfig.__post_init__)
        out[key] = None
    if out.get("amp") is None and "device" in out:  # before the rule: bf16 on CUDA only
        from .distributed import resolve_device

        try:
            out["amp"] = resolve_device(out["device"]).type == "cuda"
        except RunError:
            out["amp"] = True  # trained on a CUDA device this machine lacks
    return out
