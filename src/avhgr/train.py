"""Training: the paper's two stages, video-level model selection, resumable runs.

Stage 1 trains the audio and the visual network alone with cross-entropy. Stage 2 starts the
joint model from them and trains it with CE + λ·L_corr (``corr``: fgh, fg, or none for the
paper's baseline). Each stage keeps the epoch with the best validation *video* accuracy
(the mean of a video's window probabilities). With one modality only, stage 1 is the model
(the paper's audio-only and visual-only rows).

Reproducible and resumable: each epoch's shuffling is seeded by (seed, stage, epoch), and
after every epoch the model, optimiser and metric history are checkpointed atomically, so a
run killed at any time and resumed ends where an uninterrupted one does (on the CPU).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .cache import Cache, atomic_write_bytes, atomic_write_text
from .data import Batch, WindowReader, device_batches, labeled_subset, split_videos, windows_of
from .distributed import DistInfo, all_sum, barrier, broadcast, gather_rows, setup
from .losses import correlation_loss
from .models import AVHGRModel, ModalityNet

MODALITIES = ("audio", "visual")


class RunError(RuntimeError):
    """A run folder or setting that cannot be used as asked."""


@dataclass
class TrainConfig:
    cache: str
    out: str
    corr: str = "fgh"  # fgh | fg | none (the baseline)
    lam: float = 1.0
    fusion_layers: int = 2
    epochs: int = 100
    pretrain_epochs: int | None = None  # stage 1; None: same as epochs
    batch_size: int = 90
    lr: float = 1e-3
    seed: int = 0
    backbone: str = "resnet50"
    pretrained: str = "none"
    modalities: tuple[str, ...] = MODALITIES
    device: str = "auto"
    split: str = "random"
    labeled_fraction: float = 1.0
    init_from: str | None = None  # a run folder whose stage-1 networks start this run (no stage 1 here)
    amp: bool | None = None  # bf16 autocast; None: on CUDA only
    eval_batch_size: int = 256
    keep_states: bool = False  # keep the resume states (*.last.pt, ~3x the weights) once the run is done
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.modalities = tuple(sorted(set(self.modalities), key=MODALITIES.index))
        if not self.modalities or any(m not in MODALITIES for m in self.modalities):
            raise RunError(f"--modalities must be audio, visual or audio,visual; got {','.join(self.modalities)}")
        if self.corr not in ("fgh", "fg", "none"):
            raise RunError(f"--corr must be fgh, fg or none; got {self.corr}")
        if self.fusion_layers not in (1, 2, 4):
            raise RunError(f"--fusion-layers must be 1, 2 or 4; got {self.fusion_layers}")

    @property
    def stage1_epochs(self) -> int:
        return self.epochs if self.pretrain_epochs is None else self.pretrain_epochs

    def to_json(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


# --------------------------------------------------------------------------- files


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """safetensors (no code runs on load), written atomically."""
    atomic_write_bytes(path, safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}))


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` holds ``src``'s bytes: a hard link where the file system allows (the cells of a
    study share one stage 1, and need not store it once each), else an atomic copy."""
    tmp = dst.with_name(dst.name + ".link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(dst, Path(src).read_bytes())
        return
    os.replace(tmp, dst)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise RunError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path}: does not match this model ({str(exc).splitlines()[0]})") from exc


def save_state(state: dict, path: Path) -> None:
    """The resumable training state (tensors and plain values only), written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{path}: not a loadable training state ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def window_probabilities(
    model: torch.nn.Module,
    reader: WindowReader,
    windows: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    drop: dict[int, str] | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Class probabilities of each window. ``drop`` maps a video to the modality it misses
    at test time ("audio" or "visual"): that feature is zeroed (method.md)."""
    model.eval()

    def read(rows: np.ndarray):
        batch = reader.read(rows)
        if drop:
            vids = batch.video.numpy()
            for modality, present in (("audio", batch.audio_present), ("visual", batch.visual_present)):
                gone = np.array([drop.get(int(v)) == modality for v in vids])
                present[torch.from_numpy(gone)] = False
        return batch

    out = []
    chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    for batch in device_batches(read, chunks, device, channels_last=device.type == "cuda"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward_logits(model, batch)
        out.append(torch.softmax(logits.float(), dim=1))  # stays on the device: one copy at the end
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    if isinstance(model, AVHGRModel):
        return model(batch.visual, batch.audio, visual_present=batch.visual_present, audio_present=batch.audio_present).logits
    x = batch.audio if batch.audio is not None else batch.visual
    return model(x)


def video_scores(probs: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean window probability per video: (video ids, (n_videos, C))."""
    ids, inverse = np.unique(videos, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    return ids, sums / counts


def metrics(probs: np.ndarray, windows: np.ndarray, cache: Cache) -> dict:
    labels_w = cache.windows["label_idx"][windows]
    vids, vprobs = video_scores(probs, cache.windows["video"][windows])
    vlabels = np.array([cache.video_labels()[int(v)] for v in vids])
    vpred = vprobs.argmax(1)
    c = len(cache.classes)
    confusion = np.zeros((c, c), dtype=int)
    np.add.at(confusion, (vlabels, vpred), 1)
    per_class = {cache.classes[k]: (float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None) for k in range(c)}
    return {
        "video_accuracy": float((vpred == vlabels).mean()) if len(vids) else float("nan"),
        "window_accuracy": float((probs.argmax(1) == labels_w).mean()) if len(windows) else float("nan"),
        "videos": int(len(vids)),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "predictions": [{"video": int(v), "label": int(l), "pred": int(p)} for v, l, p in zip(vids, vlabels, vpred)],
    }


# --------------------------------------------------------------------------- the objective


def joint_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    f: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    corr: str = "none",
    lam: float = 1.0,
    semi: bool = False,
    info: DistInfo = DistInfo(),
    rows_per_rank: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE over the labelled rows + λ·L_corr over the global batch. Returns (loss to
    backpropagate, this rank's share of the mean CE, L_corr).

    Under DDP (``info.world`` > 1) each rank holds a slice of the batch: features are
    gathered with their gradients, so Soft-HGR sees the global batch, and the CE share is
    scaled by the world size, so that the gradients DDP averages equal those of one process
    holding the whole batch. With one process both steps do nothing. ``rows_per_rank``: each
    rank's share of the global batch, where the shares differ.
    """
    per_row = F.cross_entropy(logits.float(), labels, reduction="none") * labeled
    n_labeled = all_sum(labeled.sum().float(), info).clamp(min=1)  # no host sync
    ce_share = per_row.sum() / n_labeled
    loss = ce_share * info.world
    if f is None or corr == "none":
        return loss, ce_share, ce_share.new_zeros(())
    gather = lambda x: gather_rows(x, info, rows_per_rank)  # noqa: E731
    mask = gather(labeled.float()).detach() > 0.5 if semi else None
    c = correlation_loss(gather(f), gather(g), gather(h) if corr == "fgh" else None, labeled=mask)
    return loss + lam * c, ce_share, c


# --------------------------------------------------------------------------- training


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log
        self.cache = Cache.open(cfg.cache)
        self.device = resolve_device(cfg.device)
        self.dist = setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if self.dist.enabled and cfg.batch_size < 2 * self.dist.world:
            raise RunError(f"--batch-size {cfg.batch_size} is too small for {self.dist.world} processes (at least 2 rows each)")
        self.main = self.dist.main
        if not self.main:
            self.log = lambda *a, **k: None
        self.amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        self.channels_last = self.device.type == "cuda"
        if self.device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        if self.main:
            self._prepare_folder(resume)
        barrier(self.dist)
        labels, subjects = self.cache.video_labels(), self.cache.video_subjects()
        self.split = split_videos(labels, subjects, cfg.split, cfg.seed)
        if not self.split["train"] or not self.split["val"] or not self.split["test"]:
            raise RunError(f"{cfg.cache}: too few videos for a {cfg.split} split ({ {k: len(v) for k, v in self.split.items()} })")
        self.labeled = labeled_subset(self.split["train"], labels, cfg.labeled_fraction, cfg.seed)
        train_windows = windows_of(self.cache, self.split["train"])
        self.audio_stats = WindowReader.audio_stats(self.cache, train_windows, seed=cfg.seed)
        self.reader = WindowReader(self.cache, self.audio_stats, cfg.modalities)
        names = {v["id"]: v["path"] for v in self.cache.videos}
        split_doc = {k: [{"id": v, "path": names[v], "labeled": v in self.labeled} if k == "train" else {"id": v, "path": names[v]} for v in vids]
                     for k, vids in self.split.items()}  # fmt: skip
        self.tb = None
        if not self.main:
            return
        atomic_write_text(self.out / "split.json", json.dumps(split_doc, indent=1))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is a nicety
            pass

    def _prepare_folder(self, resume: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out / "config.json"
        settings = {"train": self.cfg.to_json(), "cache_settings": self.cache.settings}
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if not resume:
                raise RunError(f"{self.out}: already holds a run; use --resume to continue it, or another --out")
            free = {"device": None, "amp": None, "keep_states": None}  # may change between start and resume
            if {**old["train"], **free} != {**settings["train"], **free}:
                raise RunError(f"{self.out}: --resume with other settings than the run was started with")
        atomic_write_text(cfg_path, json.dumps(settings, indent=2))

    # ---- one stage ------------------------------------------------------------------

    def fit(self, name: str, model: torch.nn.Module, windows: np.ndarray, epochs: int, stage_index: int) -> dict:
        """Train ``model`` on ``windows`` for ``epochs``; keep the best validation epoch."""
        best_path, last_path = self.out / f"{name}.safetensors", self.out / f"{name}.last.pt"
        model, train_model, opt = self.prepare(model)
        state = {"epoch": 0, "best_acc": -1.0, "best_epoch": -1, "history": []}
        if last_path.exists():
            saved = load_state(last_path)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = {k: saved[k] for k in state}
            if state["epoch"] < epochs:
                self.log(f"{name}: resuming after epoch {state['epoch']}")
        val_windows = windows_of(self.cache, self.split["val"], self._modality_of(model))
        for epoch in range(state["epoch"], epochs):
            t0 = time.time()
            ce_mean, corr_mean = self.train_epoch(model, train_model, opt, windows, epoch, stage_index)
            joint = isinstance(model, AVHGRModel) and self.cfg.corr != "none"
            loss_mean = ce_mean + (self.cfg.lam * corr_mean if joint else 0.0)
            # Rank 0 judges the epoch; the others follow its decision.
            val = None
            if self.main:
                probs = window_probabilities(model, self.reader, val_windows, self.device, self.cfg.eval_batch_size, amp=self.amp)
                val = metrics(probs, val_windows, self.cache)
            val = broadcast({"video_accuracy": val["video_accuracy"], "window_accuracy": val["window_accuracy"]} if val else None, self.dist)
            row = {"stage": name, "epoch": epoch + 1, "loss": round(loss_mean, 6), "ce": round(ce_mean, 6), "corr": round(corr_mean, 6),
                   "val_video_acc": round(val["video_accuracy"], 6), "val_window_acc": round(val["window_accuracy"], 6),
                   "seconds": round(time.time() - t0, 3)}  # fmt: skip
            state["history"].append(row)
            state["epoch"] = epoch + 1
            if val["video_accuracy"] > state["best_acc"]:
                state["best_acc"], state["best_epoch"] = val["video_accuracy"], epoch + 1
                if self.main:
                    save_weights(model, best_path)
            if self.main:
                save_state({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, last_path)
                self._write_metrics(name, state["history"])
            barrier(self.dist)
            if self.tb is not None:
                for k in ("loss", "ce", "corr", "val_video_acc", "val_window_acc"):
                    self.tb.add_scalar(f"{name}/{k}", row[k], epoch + 1)
            self.log(f"{name} epoch {epoch + 1}/{epochs}: loss {loss_mean:.4f} (ce {ce_mean:.4f}, corr {corr_mean:.4f}) "
                     f"val video acc {val['video_accuracy']:.3f} [{row['seconds']:.1f}s]")  # fmt: skip
        if not best_path.exists() and self.main:  # zero epochs: the starting weights are the result
            save_weights(model, best_path)
        barrier(self.dist)
        load_weights(model, best_path)
        return state

    def prepare(self, model: torch.nn.Module):
        """The model on its device (channels-last on CUDA), its DDP wrapper when distributed,
        and its Adam optimiser: (model, module to call in training, optimiser)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if isinstance(model, AVHGRModel):  # the stage-1 classifier heads play no part in the joint model
            model.visual.head.requires_grad_(False)
            model.audio.head.requires_grad_(False)
        train_model = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if self.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # A batch whose rows all miss a modality leaves that network unused.
            partial = bool((self.cache.windows["face_row"] < 0).any() or (self.cache.windows["spec_row"] < 0).any())
            train_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                              find_unused_parameters=partial or self.cfg.corr != "fgh")  # fmt: skip
        # Fused Adam on CUDA: one kernel for all parameters instead of several per tensor.
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.cfg.lr, fused=self.device.type == "cuda")
        return model, train_model, opt

    def train_epoch(self, model, train_model, opt, windows: np.ndarray, epoch: int, stage_index: int) -> tuple[float, float]:
        """One pass over ``windows`` in the order seeded by (seed, stage, epoch): mean CE and L_corr."""
        rng = np.random.default_rng([self.cfg.seed, stage_index, epoch])
        torch.manual_seed(int(rng.integers(2**62)))
        order = windows[rng.permutation(len(windows))]
        model.train()
        sums = torch.zeros(2, device=self.device)
        chunks = []  # (this process's rows, every process's number of rows)
        for i in range(0, len(order), self.cfg.batch_size):
            idx = order[i : i + self.cfg.batch_size]
            if len(idx) < max(2, 2 * self.dist.world):  # Soft-HGR and BatchNorm need two rows
                continue
            parts = np.array_split(idx, self.dist.world)
            chunks.append((parts[self.dist.rank], tuple(len(p) for p in parts)))
        read = lambda chunk: replace(self.reader.read(chunk[0], self.labeled), rows_per_rank=chunk[1])  # noqa: E731
        for batch in device_batches(read, chunks, self.device, self.channels_last):
            sums += self.train_step(model, train_model, opt, batch)
        steps = len(chunks)
        ce_mean, corr_mean = (all_sum(sums, self.dist) / max(steps, 1)).tolist()
        return ce_mean, corr_mean

    def train_step(self, model, train_model, opt, batch: Batch) -> torch.Tensor:
        """One optimiser step; returns (CE share, L_corr / world) as a device tensor (no host sync)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, ce, corr = self.loss(model, batch, train_model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return torch.stack([ce.detach().float(), corr.detach().float() / self.dist.world])

    def _modality_of(self, model) -> str | None:
        if isinstance(model, AVHGRModel):
            return None
        return self.cfg.modalities[0] if len(self.cfg.modalities) == 1 else self._current_modality

    def loss(self, model, batch: Batch, forward=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``: the module to call (the DDP wrapper of ``model`` when distributed)."""
        forward = forward or model
        semi = self.cfg.labeled_fraction < 1.0
        if isinstance(model, AVHGRModel):
            labels = batch.labels if self.cfg.corr == "fgh" else None  # h only where the loss uses it
            out = forward(batch.visual, batch.audio, labels=labels,
                          visual_present=batch.visual_present, audio_present=batch.audio_present)  # fmt: skip
            return joint_objective(out.logits, batch.labels, batch.labeled, out.f, out.g, out.h,
                                   self.cfg.corr, self.cfg.lam, semi, self.dist, batch.rows_per_rank)  # fmt: skip
        logits = forward(batch.audio if self._current_modality == "audio" else batch.visual)
        return joint_objective(logits, batch.labels, batch.labeled, info=self.dist)

    def _write_metrics(self, name: str, history: list[dict]) -> None:
        path = self.out / "metrics.csv"
        rows = []
        if path.exists():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r["stage"] != name]
        rows += history
        buf = io.StringIO()
        fields = ["stage", "epoch", "loss", "ce", "corr", "val_video_acc", "val_window_acc", "seconds"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    # ---- the whole run ---------------------------------------------------------------

    def run(self) -> dict:
        cfg, c = self.cfg, len(self.cache.classes)
        t0 = time.time()
        nets: dict[str, ModalityNet] = {}
        stages: dict[str, dict] = {}
        for index, modality in enumerate(cfg.modalities):
            self._current_modality = modality
            torch.manual_seed(cfg.seed * 1000 + index)  # initial weights depend on the seed alone
            net = ModalityNet(c, cfg.backbone, cfg.pretrained)
            if cfg.init_from:
                src = Path(cfg.init_from) / f"stage1_{modality}.safetensors"
                if not src.exists():
                    raise RunError(f"--init-from {cfg.init_from}: it has no {src.name}")
                load_weights(net, src)
                if self.main:
                    link_or_copy(src, self.out / f"stage1_{modality}.safetensors")
            else:
                labeled_train = [v for v in self.split["train"] if v in self.labeled]
                windows = windows_of(self.cache, labeled_train, modality)
                state = self.fit(f"stage1_{modality}", net, windows, cfg.stage1_epochs, stage_index=index + 1)
                stages[f"stage1_{modality}"] = stage_summary(state)
            nets[modality] = net
        if len(cfg.modalities) == 1:
            model: torch.nn.Module = nets[cfg.modalities[0]]
        else:
            torch.manual_seed(cfg.seed * 1000 + 99)
            model = AVHGRModel(c, cfg.backbone, cfg.fusion_layers)
            model.visual.load_state_dict(nets["visual"].state_dict())
            model.audio.load_state_dict(nets["audio"].state_dict())
            windows = windows_of(self.cache, self.split["train"])
            stages["stage2"] = stage_summary(self.fit("stage2", model, windows, cfg.epochs, stage_index=10))
        # What prediction needs to rebuild and feed the model, beside its weights.
        card = {"classes": self.cache.classes, "modalities": list(cfg.modalities), "backbone": cfg.backbone,
                "fusion_layers": cfg.fusion_layers, "audio_stats": list(self.audio_stats),
                "features": self.cache.settings["features"]}  # fmt: skip
        if not self.main:
            barrier(self.dist)
            return {}
        save_weights(model, self.out / "model.safetensors")
        atomic_write_text(self.out / "model.json", json.dumps(card, indent=2))
        report = self.test(model)
        report["train_seconds"] = round(time.time() - t0, 2)
        report["stages"] = stages
        write_report_files(self.out, report, self.cache.classes)
        atomic_write_text(self.out / "report.json", json.dumps(report, indent=2))  # last: the run is complete
        drop_states(self.out, cfg.keep_states)
        if self.tb is not None:
            self.tb.close()
        barrier(self.dist)
        return report

    def test(self, model, drop: dict[int, str] | None = None) -> dict:
        windows = windows_of(self.cache, self.split["test"])
        if len(self.cfg.modalities) == 1:
            windows = windows_of(self.cache, self.split["test"], self.cfg.modalities[0])
        probs = window_probabilities(model, self.reader, windows, self.device, self.cfg.eval_batch_size, drop, self.amp)
        m = metrics(probs, windows, self.cache)
        names = {v["id"]: v["path"] for v in self.cache.videos}
        for p in m["predictions"]:
            p["path"] = names[p["video"]]
            p["label"], p["pred"] = self.cache.classes[p["label"]], self.cache.classes[p["pred"]]
        return {"classes": self.cache.classes, "config": self.cfg.to_json(), "audio_stats": list(self.audio_stats), **m}


def drop_states(out: Path, keep: bool = False) -> None:
    """A finished run needs its weights, not its optimiser states: without this, every cell
    of a study leaves ~0.5 GB (ResNet-18) behind."""
    if keep:
        return
    for path in out.glob("*.last.pt"):
        path.unlink(missing_ok=True)
    # The joint model's best weights are model.safetensors; stage-1 weights stay (--init-from).
    if (out / "model.safetensors").exists():
        (out / "stage2.safetensors").unlink(missing_ok=True)


def stage_summary(state: dict) -> dict:
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "best_val_video_accuracy": state["best_acc"]}


def write_report_files(out: Path, report: dict, classes: list[str], stem: str = "test") -> None:
    from .plots import confusion_png

    atomic_write_text(out / f"{stem}_confusion.json", json.dumps({"classes": classes, "matrix": report["confusion"]}))
    title = f"video accuracy {100 * report['video_accuracy']:.1f} % ({report['videos']} test videos)"
    confusion_png(np.array(report["confusion"]), classes, out / f"{stem}_confusion.png", title)


def train(cfg: TrainConfig, runs: int = 1, resume: bool = False, log=print) -> dict:
    """One run in ``cfg.out``, or ``runs`` seeds in ``cfg.out/seed<N>`` with a summary."""
    if runs <= 1:
        return _train_one(cfg, resume, log)
    results = [_train_one(replace(cfg, seed=cfg.seed + i, out=str(Path(cfg.out) / f"seed{cfg.seed + i}")), resume, log)
               for i in range(runs)]  # fmt: skip
    if not all(results):  # a process other than rank 0 of a distributed run: nothing to report
        return {}
    accs = np.array([r["video_accuracy"] for r in results])
    summary = {
        "runs": runs, "seeds": [cfg.seed + i for i in range(runs)],
        "video_accuracy": [float(a) for a in accs],
        "mean": float(accs.mean()), "std": float(accs.std(ddof=1)) if runs > 1 else 0.0,
    }  # fmt: skip
    atomic_write_text(Path(cfg.out) / "summary.json", json.dumps(summary, indent=2))
    return summary


def _train_one(cfg: TrainConfig, resume: bool, log) -> dict:
    """One run; resumed after it had finished, its report is read back and nothing is redone."""
    done = Path(cfg.out) / "report.json"
    if not (resume and done.exists()):
        return Trainer(cfg, resume, log).run()
    if int(os.environ.get("RANK", "0")) != 0:  # as Trainer.run: only rank 0 reports and writes
        return {}
    drop_states(Path(cfg.out), cfg.keep_states)  # it may have been killed while tidying up
    return json.loads(done.read_text())


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{100 * v.mean():.2f} ± {100 * (v.std(ddof=1) if len(v) > 1 else 0.0):.2f}" if len(v) else "n/a"

