"""Training: the paper's two stages, read top to bottom.

    train_run     the recipe: stage 1 (each network alone, CE), the fusion warm-up, stage 2
                  (joint, CE + λ·L_corr), the test once at the end (best and last epoch)
    fit           one stage's loop: epochs of training, validation, the best epoch, resume
    train_epoch   one pass over the training windows; train_step: one optimiser step

The run folder (config check, checkpoints, metrics, report, resume states) is ``runs.RunFolder``;
evaluation is ``evaluate``; every model takes a batch and picks its own inputs, so no code here
decides which tensor goes to which network.

Model selection: each stage keeps the epoch of best validation *video* accuracy (the mean of a
video's window probabilities), ties broken by the validation window accuracy, then by the
earlier epoch. The fusion warm-up is a phase of its own before stage 2 (only the new fusion
network learns, with CE alone): its epochs are never stage 2's best, so every method's model is
one that its own loss trained (with the warm-up counted in, the three methods' identical warm-up
model won the selection on the demo corpus).

Reproducible and resumable: each epoch's shuffling is seeded by (seed, stage, epoch), and after
every epoch the model, optimiser and metric history are checkpointed atomically, so a run killed
at any time and resumed ends where an uninterrupted one does (on the CPU). Under torchrun each
process takes a slice of every batch (see ``distributed``); only rank 0 reads and writes the run
folder and sends the others what they need.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .augment import augment, drop_modalities
from .cache import Cache, atomic_write_text
from .config import STAGE1_SETTINGS, WARMUP_SETTINGS, TrainConfig, cache_kind, upgrade
from .data import WindowReader, device_batches, draw_windows, labeled_subset, split_videos
from .distributed import DistInfo, GlobalBatchNorm, all_sum, barrier, broadcast, resolve_device, setup
from .errors import RunError, SettingsChanged, UserError
from .evaluate import evaluate_videos, metrics, window_probabilities
from .losses import joint_objective
from .models import AVHGRModel, ModalityNet, ProductModel
from .precision import autocast
from .runs import RunFolder, apply_weights, link_or_copy, load_state, read_weights, split_document, weights_digest, weights_metadata
from .stats import sample_std

__all__ = ["RunError", "SettingsChanged", "TrainConfig", "train", "train_owned", "train_run"]


@dataclass
class Stage:
    """One stage: a model, the training videos it learns from, and its loss."""

    name: str  # stage1_audio, stage1_visual, stage2_warmup, stage2
    model: torch.nn.Module
    videos: list[int]
    epochs: int
    shuffle_key: int  # seeds the stage's shuffles and window draws: each stage has its own order
    windows: int | str = "all"  # per video and epoch: all cached windows, or k drawn anew
    corr: str = "none"
    trains: str = "all"  # "all" parameters, or only the "fusion" network (the warm-up)
    keep: str = "best"  # the "best" validation epoch, or the "last" (the warm-up)


class Session:
    """What every stage of a run shares: the device and processes, the cache, the split, the reader."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo = DistInfo()):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = dist
        if self.dist.enabled and self.device.type == "cuda":  # distributed.setup made it the current device
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.enabled and cfg.batch_size < 2 * self.dist.world:
            raise RunError(f"--batch-size {cfg.batch_size} is too small for {self.dist.world} processes (at least 2 rows each)")
        self.amp = cfg.amp
        self.channels_last = self.device.type == "cuda" or self.amp  # with bf16 the CPU is faster channels-last too
        if self.device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.cache = Cache.open(cfg.cache)
        cfg.refuse_noops(cache_kind(cfg.cache))
        if self.dist.enabled:  # every node reads its own copy of the cache: it must be the same cache
            mine = self.cache.digest()
            differs = torch.tensor([float(broadcast(mine, self.dist) != mine)], device=self.device)
            if all_sum(differs, self.dist).item():  # every rank stops, none waits for the others
                raise RunError(f"{cfg.cache}: the caches of the processes are not one cache (other videos or windows); "
                               "copy rank 0's cache to every node")  # fmt: skip
        self.classes = self.cache.classes
        labels = self.cache.video_labels()
        try:
            self.split = split_videos(labels, self.cache.video_subjects(), cfg.split, cfg.seed, fold=cfg.fold, folds=cfg.folds,
                                      partition=cfg.fold_partition)
        except ValueError as exc:
            raise RunError(f"{cfg.cache}: {exc}") from exc
        if not self.split["train"] or (cfg.split != "all" and not all(self.split.values())):
            raise RunError(f"{cfg.cache}: too few videos for a {cfg.split} split ({ {k: len(v) for k, v in self.split.items()} })")
        self.labeled = labeled_subset(self.split["train"], labels, cfg.labeled_fraction, cfg.seed)
        self.reader = WindowReader(self.cache, modalities=cfg.modalities, level=cfg.level, evidence=cfg.evidence)
        self.audio_stats = self.reader.fit_audio_stats(self.reader.windows(self.split["train"]), seed=cfg.seed)
        self.visual_stats = self.reader.fit_visual_stats(self.reader.windows(self.split["train"]))
        table = self.cache.visual_features  # facial features instead of face crops: their columns
        self.visual_input = {"kind": "faces"} if table is None else {"kind": "features", "columns": table["columns"], "source": table,
                                                                     "stats": self.visual_stats}  # fmt: skip
        self.feature_dim = None if table is None else len(table["columns"])  # the visual input's numbers per window, for features

    def batches(self, windows: np.ndarray, batch_size: int | None = None):
        """Device batches of ``windows`` in order (no shuffling, no augmentation)."""
        bs = batch_size or self.cfg.eval_batch_size
        return device_batches(self.reader.read, [windows[i : i + bs] for i in range(0, len(windows), bs)], self.device, self.channels_last)

    def validate(self, model: torch.nn.Module) -> dict:
        """Validation video and window accuracy, judged by rank 0 and known to every rank; NaN without
        validation videos (``--split all``), where ``fit`` keeps the last epoch."""
        val = None
        if not self.split["val"]:
            return {"video_accuracy": float("nan"), "window_accuracy": float("nan")}
        if self.dist.main:
            windows = self.reader.windows(self.split["val"], model.modalities)
            if self.cfg.val_windows != "all":  # the first k of each video's cached windows (they are random already)
                windows = windows[self.cache.windows["window"][windows] < self.cfg.val_windows]
            probs = window_probabilities(model, self.reader, windows, self.device, self.cfg.eval_batch_size, amp=self.amp)
            m = metrics(probs, windows, self.cache, self.split["val"])
            val = {"video_accuracy": m["video_accuracy"], "window_accuracy": m["window_accuracy"]}
        return broadcast(val, self.dist)

    def test(self, model: torch.nn.Module) -> dict:
        """The test videos' metrics (rank 0; the others get {})."""
        if not self.dist.main:
            return {}
        return evaluate_videos(model, self.reader, self.cache, self.split["test"], self.device, self.cfg.eval_batch_size, amp=self.amp)


def on_main(dist: DistInfo, read):
    """``read()`` done by rank 0, the only process that reads the run folders, and its result sent
    to every rank (so the nodes of a multi-node run need no shared disk). A user error it raises
    is raised on every rank."""
    result = error = None
    if dist.main:
        try:
            result = read()
        except UserError as exc:
            error = exc
        except BaseException as exc:  # a bug: the others must not wait for rank 0 forever
            broadcast((None, RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}")), dist)
            raise
    result, error = broadcast((result, error), dist)
    if error is not None:
        raise error
    return result


# --------------------------------------------------------------------------- the recipe


def run_settings(cfg: TrainConfig) -> dict:
    """What a run folder records and a resume must match: the training settings, the cache's
    settings and, when it starts from another run, the digests of the stage-1 weights it takes."""
    try:
        cache_settings = json.loads((Path(cfg.cache) / "settings.json").read_text())
    except (OSError, json.JSONDecodeError):
        cache_settings = Cache.open(cfg.cache).settings  # raises the clear error of a missing or unfinished cache
    settings = {"train": cfg.to_json(), "cache_settings": cache_settings}
    if cfg.init_from:
        source = RunFolder(cfg.init_from)
        taken = [f"stage1_{m}" for m in cfg.modalities] + (["stage2_warmup"] if warmup_source(cfg, source) else [])
        settings["init_weights"] = {name.removeprefix("stage1_"): weights_digest(source.best(name)) for name in taken
                                    if source.best(name).exists()}  # fmt: skip
    return settings


def warmup_source(cfg: TrainConfig, source: RunFolder) -> RunFolder | None:
    """``source`` (the run this one starts from) where its fusion warm-up is the one this run would
    train: a joint run of the same modalities whose warm-up settings (stage 1's among them) are
    ours. Then this run takes it instead of training it again, so the methods of a paired
    comparison share the very warm-up weights on every device (cuDNN's autotuning need not
    compute one twice alike). None otherwise."""
    if not cfg.fusion_warmup or len(cfg.modalities) < 2 or not source.best("stage2_warmup").exists():
        return None
    try:
        theirs = upgrade(source.config()["train"])
    except (RunError, KeyError):
        return None
    ours = cfg.to_json()
    if list(theirs.get("modalities", [])) != list(cfg.modalities) or any(theirs.get(k) != ours.get(k) for k in WARMUP_SETTINGS):
        return None
    return source


def train_run(cfg: TrainConfig, resume: bool = False, log=print, progress: bool = False) -> dict:
    """One run in ``cfg.out``: stage 1 per modality, the fusion warm-up, stage 2 joint, then the
    test. A finished run resumed is read back, nothing redone, once its settings are checked."""
    dist = setup(resolve_device(cfg.device).type)
    run = RunFolder(cfg.out, writer=dist.main)
    settings = on_main(dist, lambda: run_settings(cfg))

    def check():
        run.check(settings, resume)  # before a finished run's result is returned
        return run.finished

    if on_main(dist, check):
        if not dist.main:
            return {}
        run.drop_states(cfg.keep_states)  # it may have been killed while tidying up
        return run.report()
    t0 = time.time()
    s = Session(cfg, dist)
    if not dist.main:
        log = lambda *a, **k: None  # noqa: E731
    split_doc = split_document(s.cache, s.split, s.labeled)
    source = on_main(dist, lambda: check_init_source(cfg, s, split_doc)) if cfg.init_from else None  # before anything is written
    run.start(settings)
    run.write_split(split_doc)
    barrier(s.dist)

    stages: dict[str, dict] = {}
    nets: dict[str, ModalityNet] = {}
    for index, modality in enumerate(cfg.modalities):
        torch.manual_seed(cfg.seed * 1000 + index)  # initial weights depend on the seed alone
        net = ModalityNet(len(s.classes), modality, cfg.backbone, cfg.pretrained, s.feature_dim)
        name = f"stage1_{modality}"
        if source is not None:
            best = source.best(name)
            apply_weights(net, on_main(dist, lambda: read_weights(best)), best)
            if run.writer:
                for path in (best, source.final(name)):
                    if path.exists():
                        link_or_copy(path, run.file(path.name))
        else:
            labeled_train = [v for v in s.split["train"] if v in s.labeled]
            stages[name] = fit(s, run, Stage(name, net, labeled_train, cfg.epochs, index + 1, cfg.windows_per_epoch), log, progress)
        nets[modality] = net

    if len(nets) == 1:  # trained on the device by fit, or taken from --init-from's run on the CPU: moved either way
        model: torch.nn.Module = nets[cfg.modalities[0]].to(s.device)
        tested = f"stage1_{cfg.modalities[0]}"
    elif cfg.fusion == "product":  # late fusion: the stage-1 networks as they are, nothing trained on top
        model = ProductModel(nets["audio"], nets["visual"], cfg.audio_weight).to(s.device)
        tested = None
    else:
        torch.manual_seed(cfg.seed * 1000 + 99)
        model = AVHGRModel.from_stage1(nets, cfg.fusion_layers, cfg.feature_norm)
        sample = np.random.default_rng(cfg.seed).permutation(s.reader.windows(s.split["train"]))[:2048]
        model.to(s.device).calibrate(s.batches(np.sort(sample)))
        warm = on_main(dist, lambda: warmup_source(cfg, source) is not None) if source is not None else False
        if warm:  # the source's warm-up, as this run would train it (the digest is in init_weights)
            path = source.best("stage2_warmup")
            apply_weights(model, on_main(dist, lambda: read_weights(path)), path)
            if run.writer:
                link_or_copy(path, run.file(path.name))
            taken = on_main(dist, lambda: source.report()["stages"].get("stage2_warmup", {}))
            stages["stage2_warmup"] = {**taken, "from": taken.get("from", str(source.path))}
        elif cfg.fusion_warmup:  # CE alone, only the fresh fusion network learns: the same for every method
            warmup = Stage("stage2_warmup", model, s.split["train"], cfg.fusion_warmup, 9, cfg.joint_windows, trains="fusion", keep="last")
            stages["stage2_warmup"] = fit(s, run, warmup, log, progress)
        stage2 = Stage("stage2", model, s.split["train"], cfg.joint_epochs, 10, cfg.joint_windows, cfg.corr)
        stages["stage2"] = fit(s, run, stage2, log, progress)
        tested = "stage2"

    report = {"classes": s.classes, "config": cfg.to_json(), "audio_stats": list(s.audio_stats)}
    if s.split["test"]:
        report |= s.test(model)
        kept_last = tested in stages and stages[tested]["best_epoch"] == stages[tested]["epochs"]  # the kept model is the last epoch's
        last = {"video_accuracy": report.get("video_accuracy"), "window_accuracy": report.get("window_accuracy")}
        if tested is None:  # the product: its networks' epochs were chosen apart, there is no last epoch of its own
            report["last_epoch"] = None
        else:
            report["last_epoch"] = last if kept_last and s.dist.main else last_epoch_test(s, model, run.final(tested))
    else:  # --split all: no test
        report |= {"video_accuracy": None, "window_accuracy": None, "videos": 0, "predictions": [], "last_epoch": None}
    report |= {"train_seconds": round(time.time() - t0, 2), "stages": stages}
    # What prediction needs to rebuild and feed the model, beside its weights.
    card = {"classes": s.classes, "modalities": list(cfg.modalities), "backbone": cfg.backbone, "fusion": cfg.fusion,
            "audio_weight": cfg.audio_weight, "fusion_layers": cfg.fusion_layers,
            "feature_norm": cfg.feature_norm, "audio_stats": list(s.audio_stats), "level": cfg.level, "evidence": cfg.evidence,
            "features": s.cache.settings["features"], "amp": cfg.amp,
            "visual_input": s.visual_input if "visual" in cfg.modalities else {"kind": "none"}}  # fmt: skip
    run.finish(model, card, report, cfg.keep_states)
    barrier(s.dist)
    return report if run.writer else {}


def last_epoch_test(s: Session, model: torch.nn.Module, final_weights: Path) -> dict | None:
    """The test of the tested model's stage as it was after its last epoch (rank 0), to set beside
    the best epoch's: how much model selection mattered."""
    if not s.dist.main or not final_weights.exists():
        return None
    kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
    apply_weights(model, read_weights(final_weights), final_weights)
    m = s.test(model)
    model.load_state_dict(kept)
    return {"video_accuracy": m["video_accuracy"], "window_accuracy": m["window_accuracy"]}


def check_init_source(cfg: TrainConfig, s: Session, split_doc: dict) -> RunFolder:
    """The run whose stage-1 networks start this one, refused unless its stage 1 was trained as
    this run's would be: on the same videos (else it may have seen this run's validation or
    test videos), from the same cache settings, with the same stage-1 settings."""
    source = RunFolder(cfg.init_from)
    where = f"--init-from {cfg.init_from}"
    config = source.config()
    for modality in cfg.modalities:
        if not source.best(f"stage1_{modality}").exists():
            raise RunError(f"{where}: it has no stage1_{modality}.safetensors (its stage 1 did not finish)")
    if not source.finished:
        raise RunError(f"{where}: that run has not finished (no report.json)")
    # A source may itself have started from another run: its stage-1 files are that run's (hard links),
    # and this run records their digests, so a stage 1 trained again anywhere up the chain is noticed.
    theirs, ours = upgrade(config["train"]), cfg.to_json()
    differ = [k for k in STAGE1_SETTINGS if theirs.get(k) != ours.get(k)]
    if config.get("cache_settings") != s.cache.settings:
        differ.append("cache settings")
    if source.split() != split_doc:
        differ.append("split (train/val/test videos or labelled subset)")
    if differ:
        leak = any(k in differ for k in ("seed", "split", "fold", "folds", "fold_partition", "labeled_fraction")) or differ[-1].startswith("split")
        why = "starting from it could train on this run's validation or test videos" if leak else "train stage 1 here, or start from a run with the same stage-1 settings"
        raise RunError(f"{where}: its stage 1 was trained with another {', '.join(differ)}; {why}")
    return source


# --------------------------------------------------------------------------- one stage


def fit(s: Session, run: RunFolder, stage: Stage, log=print, progress: bool = False) -> dict:
    """Train ``stage.model`` for ``stage.epochs``; end with the kept epoch (``stage.keep``) and
    save the last epoch's weights beside it (``RunFolder.final``)."""
    model, train_model, opt = prepare(s, stage)
    state = {"epoch": 0, "best_acc": -1.0, "best_window_acc": -1.0, "best_epoch": -1, "history": [], "first_step_corr": None}
    best_weights = None  # every rank keeps the kept epoch's weights: no rank reads them back from disk
    saved = on_main(s.dist, lambda: load_state(run.state_file(stage.name)) if run.state_file(stage.name).exists() else None)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = {k: saved.get(k, v) for k, v in state.items()}
        best = run.best(stage.name)
        best_weights, kept = on_main(s.dist, lambda: (read_weights(best), weights_metadata(best)) if best.exists() else (None, {}))
        if kept.get("epoch") and int(kept["epoch"]) != state["best_epoch"]:
            # Killed after an epoch's best weights, before its state: that epoch is done again, and the
            # weights on disk are labelled with their own epoch and accuracy (on a GPU the redo may differ).
            state["best_epoch"], state["best_acc"], state["best_window_acc"] = int(kept["epoch"]), float(kept["video_accuracy"]), float(kept["window_accuracy"])
        if state["epoch"] < stage.epochs:
            log(f"{stage.name}: resuming after epoch {state['epoch']}")
    windows = s.reader.windows(stage.videos, model.modalities)
    for epoch in range(state["epoch"], stage.epochs):
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = s.cfg.lr_at(stage, epoch)
        ce, corr, loss, first_corr = train_epoch(s, stage, train_model, opt, windows, epoch, progress)
        if epoch == 0 and stage.corr != "none":
            state["first_step_corr"] = first_corr  # L_corr at the first joint step: does the stage start sane?
        val = s.validate(model)
        row = {"stage": stage.name, "epoch": epoch + 1, "loss": round(loss, 6), "ce": round(ce, 6), "corr": round(corr, 6),
               "val_video_acc": round(val["video_accuracy"], 6), "val_window_acc": round(val["window_accuracy"], 6),
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3)}  # fmt: skip
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if keeps(stage, val, state):
            state["best_acc"], state["best_window_acc"], state["best_epoch"] = val["video_accuracy"], val["window_accuracy"], epoch + 1
            best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            run.save_best(stage.name, model, {"epoch": str(epoch + 1), "video_accuracy": repr(val["video_accuracy"]),
                                              "window_accuracy": repr(val["window_accuracy"])})  # fmt: skip
        run.save_state(stage.name, {"model": model.state_dict(), "optimizer": opt.state_dict(), **state})
        run.write_metrics(stage.name, state["history"])
        run.add_scalars(row)
        barrier(s.dist)
        log(f"{stage.name} epoch {epoch + 1}/{stage.epochs}: loss {loss:.4f} (ce {ce:.4f}, corr {corr:.4f}) "
            f"val video acc {val['video_accuracy']:.3f} [{row['seconds']:.1f}s]")  # fmt: skip
    if stage.keep == "best":
        run.save_final(stage.name, model)
    if best_weights is None:  # zero epochs: the starting weights are the result
        run.save_best(stage.name, model)
    else:
        model.load_state_dict(best_weights)
    barrier(s.dist)
    best = None if math.isnan(state["best_acc"]) else state["best_acc"]  # NaN: no validation videos
    best_window = None if best is None else state["best_window_acc"]
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "best_val_video_accuracy": best,
            "best_val_window_accuracy": best_window, "first_step_corr": state["first_step_corr"]}  # fmt: skip


def keeps(stage: Stage, val: dict, state: dict) -> bool:
    """Whether this epoch replaces the kept one: a better validation video accuracy, or the same
    with a better window accuracy (the earlier epoch wins a full tie); always for the warm-up and
    without validation videos (the last epoch is kept)."""
    if stage.keep == "last" or math.isnan(val["video_accuracy"]):
        return True
    return (val["video_accuracy"], val["window_accuracy"]) > (state["best_acc"], state["best_window_acc"])


def prepare(s: Session, stage: Stage):
    """The model on its device (channels-last on CUDA) with only the parameters its stage trains,
    its DDP wrapper when distributed, and Adam: (model, module to call in training, optimiser)."""
    model = stage.model.to(s.device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    model.freeze_unused(stage.corr, stage.trains)
    train_model = model
    if s.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # BatchNorm over the global batch, so that the step does not depend on the number of processes:
        # torch's SyncBatchNorm on GPUs, ours on the CPU. In place: the same module.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if s.device.type == "cuda" else GlobalBatchNorm.convert(model)
        # A batch whose rows all miss a modality leaves that network unused.
        partial = any(not s.reader.present[m].all() for m in s.cfg.modalities)
        train_model = DDP(model, device_ids=[s.device.index] if s.device.type == "cuda" else None, find_unused_parameters=partial)
    # Fused Adam on CUDA: one kernel for all parameters instead of several per tensor.
    params, fused = [p for p in model.parameters() if p.requires_grad], s.device.type == "cuda"
    if s.cfg.weight_decay:
        opt = torch.optim.AdamW(params, lr=s.cfg.lr, weight_decay=s.cfg.weight_decay, fused=fused)
    else:
        opt = torch.optim.Adam(params, lr=s.cfg.lr, fused=fused)
    return model, train_model, opt


def train_epoch(s: Session, stage: Stage, train_model, opt, windows: np.ndarray, epoch: int, progress: bool = False):
    """One pass over ``windows`` in the order seeded by (seed, stage, epoch): mean CE, L_corr and
    loss (CE + λ·L_corr with λ at each step), and L_corr of the first step."""
    rng = np.random.default_rng([s.cfg.seed, stage.shuffle_key, epoch])
    torch.manual_seed(int(rng.integers(2**62)))
    if stage.windows != "all":  # a new draw from each video's cached windows every epoch
        windows = draw_windows(s.cache, windows, stage.windows, rng)
    order = windows[rng.permutation(len(windows))]
    bs, world = s.cfg.batch_size, s.dist.world
    # Full batches only: a last batch of a few rows would give BatchNorm and the Soft-HGR statistics
    # a handful of rows, and a step as large as any other. (The epoch's draw and order change every
    # epoch, so no window is always left out.) Fewer windows than one batch: that one short batch.
    n_batches = max(len(order) // bs, 1 if len(order) >= max(2, 2 * world) else 0)
    # Each process's rows of every batch, and every process's number of rows (they may differ).
    chunks = []
    for i in range(n_batches):
        parts = np.array_split(order[i * bs : (i + 1) * bs], world)
        chunks.append((parts[s.dist.rank], tuple(len(p) for p in parts), i))
    drop = s.cfg.modality_dropout if stage.name.startswith("stage2") else 0.0

    def read(chunk):
        rows, sizes, step = chunk
        batch = replace(s.reader.read(rows, s.labeled), rows_per_rank=sizes)
        if drop:  # seeded by (seed, stage, epoch, step): the same in every process and every reader thread
            batch.rows = drop_modalities(batch.rows, drop, np.random.default_rng([s.cfg.seed, stage.shuffle_key, epoch, step]),
                                         sum(sizes[: s.dist.rank]), sum(sizes))  # fmt: skip
        return batch

    train_model.train()
    sums, first = torch.zeros(3, device=s.device), torch.zeros(3, device=s.device)
    bar = EpochBar(f"{stage.name} {epoch + 1}/{stage.epochs}", sum(sum(c[1]) for c in chunks), progress and s.dist.main)
    for step, batch in enumerate(device_batches(read, chunks, s.device, s.channels_last)):
        lam = s.cfg.lam_at(epoch, step, len(chunks)) if stage.name == "stage2" else 0.0
        losses = train_step(s, stage, train_model, opt, batch, lam)
        sums += losses
        if step == 0:
            first = losses
        bar.update(sum(batch.rows_per_rank), sums)
    bar.close()
    ce, corr, loss = (all_sum(sums, s.dist) / max(len(chunks), 1)).tolist()
    return ce, corr, loss, all_sum(first, s.dist)[1].item()


def train_step(s: Session, stage: Stage, train_model, opt, batch, lam: float) -> torch.Tensor:
    """One optimiser step; returns (CE share, L_corr, CE share + λ·L_corr), each divided among the
    processes (their sum is the global batch's), as a device tensor (no host sync)."""
    batch = augment(batch, spectrograms=s.cfg.spec_augment, faces=s.cfg.face_augment, rank=s.dist.rank, feature_noise=s.cfg.feature_noise)
    with autocast(s.device, s.amp):
        out = train_model(batch)
        loss, ce, corr = joint_objective(out, batch, stage.corr, lam, s.cfg.labeled_fraction < 1.0, s.dist,
                                         standardize_h=s.cfg.feature_norm == "batch")  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    corr_share = corr.detach().float() / s.dist.world
    return torch.stack([ce.detach().float(), corr_share, ce.detach().float() + lam * corr_share])


class EpochBar:
    """A progress bar over one epoch: windows/s, time left and the running loss. The loss is read
    from the device at most once a second, so the bar adds no host sync to most steps."""

    def __init__(self, title: str, windows: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=windows, desc=title, unit="win", leave=False, dynamic_ncols=True)
        self.steps, self.shown = 0, time.time()

    def update(self, rows: int, sums: torch.Tensor) -> None:
        if self.bar is None:
            return
        self.steps += 1
        self.bar.update(rows)
        if time.time() - self.shown > 1.0:
            ce, corr, _ = (sums / self.steps).tolist()
            self.bar.set_postfix_str(f"ce {ce:.3f}" + (f" corr {corr:.3f}" if corr else ""))
            self.shown = time.time()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- several seeds


def train(cfg: TrainConfig, runs: int = 1, resume: bool = False, log=print, progress: bool = False) -> dict:
    """One run in ``cfg.out``, or ``runs`` seeds in ``cfg.out/seed<N>`` with a summary (no test
    accuracy where the runs have no test set, ``--split all``)."""
    if runs <= 1:
        return train_run(cfg, resume, log, progress)
    seeds = [cfg.seed + i for i in range(runs)]
    results = [train_run(replace(cfg, seed=seed, out=str(Path(cfg.out) / f"seed{seed}")), resume, log, progress) for seed in seeds]
    if not all(results):  # a process other than rank 0 of a distributed run: nothing to report
        return {}
    accs = [r["video_accuracy"] for r in results]
    tested = None not in accs
    summary = {"runs": runs, "seeds": seeds, "video_accuracy": accs,
               "mean": float(np.mean(accs)) if tested else None,
               "std": sample_std(accs) if tested else None}  # fmt: skip
    atomic_write_text(Path(cfg.out) / "summary.json", json.dumps(summary, indent=2))
    return summary


def train_owned(cfg: TrainConfig, log=print, progress: bool = False) -> dict:
    """``train_run(cfg, resume=True)`` for a run folder that belongs to the caller (the demo, the
    built-in model's build, the benchmarks): one started under other settings, or from a stage 1
    that has been trained again since, is removed and trained again (the old result never comes
    back under new settings)."""
    import shutil

    try:
        return train_run(cfg, resume=True, log=log, progress=progress)
    except SettingsChanged as exc:
        log(f"{cfg.out}: its settings changed ({', '.join(exc.changed)}): training it again")
        joined = torch.distributed.is_initialized()  # train_run joined the group, if there is one
        if not joined or torch.distributed.get_rank() == 0:  # only rank 0 has (or owns) the folder
            shutil.rmtree(cfg.out, ignore_errors=True)
        if joined:
            torch.distributed.barrier()
        return train_run(cfg, resume=False, log=log, progress=progress)
