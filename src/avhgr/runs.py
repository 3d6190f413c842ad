"""The run folder: everything a training run keeps on disk, apart from the optimisation itself.

    config.json        the settings the run was started with (a resume must match them)
    split.json         the videos of train / val / test by path, and which training videos keep labels
    metrics.csv        one row per epoch and stage (and TensorBoard logs in tb/)
    stage1_*.safetensors, stage2.safetensors   each stage's best weights
    stage1_*.final.safetensors                 stage 1's weights after its last epoch (its "last epoch" test)
    stage2_warmup.safetensors                  the model after the fusion warm-up (runs started from this one take it)
    *.resume.pt        resume states (weights, Adam moments, metric history), deleted once done
    model.safetensors + model.json             what prediction needs
    report.json        the test result, written last: its presence means the run is finished

Weights are safetensors and states are loaded with ``weights_only=True``: no code runs on load.
Every write is atomic, so a run killed at any moment leaves the previous state whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .cache import Cache, atomic_write_bytes, atomic_write_text
from .config import RESUME_FREE, upgrade
from .errors import RunError, SettingsChanged
from .models import build_model

METRIC_FIELDS = ["stage", "epoch", "loss", "ce", "corr", "val_video_acc", "val_window_acc", "lr", "seconds"]
# --------------------------------------------------------------------------- weights and states


def save_weights(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors (no code runs on load), written atomically; ``metadata``: strings kept in its header."""
    atomic_write_bytes(path, safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, metadata=metadata))


def weights_metadata(path: Path) -> dict[str, str]:
    """The header strings ``save_weights`` kept (e.g. a best checkpoint's epoch and accuracy)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict, or a clear error naming the file."""
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise RunError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc


def apply_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path}: does not match this model ({str(exc).splitlines()[0]})") from exc


def load_weights(module: torch.nn.Module, path: Path) -> None:
    apply_weights(module, read_weights(path), path)


def weights_digest(path: Path) -> str:
    """sha256 of a weights file: what a run that starts from it records, so that a source trained
    again is noticed."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_state(state: dict, path: Path) -> None:
    """A resumable training state (tensors and plain values only), written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{path}: not a loadable training state ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


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


# --------------------------------------------------------------------------- the folder


def split_document(cache: Cache, split: dict[str, list[int]], labeled: set[int]) -> dict:
    """The split by path (ids are only positions in one cache), with the labelled training videos."""
    names = {v["id"]: v["path"] for v in cache.videos}
    return {part: [{"id": v, "path": names[v], **({"labeled": v in labeled} if part == "train" else {})} for v in vids]
            for part, vids in split.items()}  # fmt: skip


class RunFolder:
    """One run's folder. Only the main process of a distributed run writes (``writer``)."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._tb = None  # TensorBoard writer, opened on the first row

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.file("report.json").exists()

    def report(self) -> dict:
        return json.loads(self.file("report.json").read_text())

    def config(self) -> dict:
        try:
            return json.loads(self.file("config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.path}: not an avhgr run ({exc})") from exc

    def split(self) -> dict:
        try:
            return json.loads(self.file("split.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.path}: its split.json is missing or unreadable ({exc})") from exc

    def check(self, settings: dict, resume: bool) -> None:
        """Refuse a folder that already holds a run unless ``resume``, and a resume (of a run
        finished or not) under other ``settings`` than it was started with: the old result must
        never come back under new settings."""
        if not self.file("config.json").exists():
            return
        if not resume:
            raise RunError(f"{self.path}: already holds a run; use --resume to continue it, or another --out")
        old = self.config()
        was = upgrade(old["train"])
        changed = sorted(k for k in set(was) | set(settings["train"])
                         if k not in RESUME_FREE and was.get(k) != settings["train"].get(k))  # fmt: skip
        changed += [k for k in ("cache_settings", "init_weights") if old.get(k) != settings.get(k)]
        if changed:
            raise SettingsChanged(self.path, changed)

    def start(self, settings: dict) -> None:
        """Create the folder and write its settings (``check`` first)."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file("config.json"), json.dumps(settings, indent=2))

    def write_split(self, document: dict) -> None:
        if self.writer:
            atomic_write_text(self.file("split.json"), json.dumps(document, indent=1))

    # ---- one stage's files

    def best(self, stage: str) -> Path:
        """The stage's best weights (its result)."""
        return self.file(f"{stage}.safetensors")

    def final(self, stage: str) -> Path:
        """The stage's weights after its last epoch, for the test of the last epoch beside the best."""
        return self.file(f"{stage}.final.safetensors")

    def state_file(self, stage: str) -> Path:
        """The stage's resume state (weights, optimiser, metric history), after its latest epoch
        (``*.last.pt`` in runs made before the name said what it is)."""
        old = self.file(f"{stage}.last.pt")
        return old if old.exists() else self.file(f"{stage}.resume.pt")

    def save_best(self, stage: str, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
        if self.writer:
            save_weights(model, self.best(stage), metadata)

    def save_final(self, stage: str, model: torch.nn.Module) -> None:
        if self.writer:
            save_weights(model, self.final(stage))

    def save_state(self, stage: str, state: dict) -> None:
        if self.writer:
            save_state(state, self.state_file(stage))

    def write_metrics(self, stage: str, history: list[dict]) -> None:
        """metrics.csv with ``stage``'s rows replaced by ``history`` (the other stages' rows stay)."""
        if not self.writer:
            return
        path = self.file("metrics.csv")
        rows = []
        if path.exists():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r["stage"] != stage]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n", extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows + history)
        atomic_write_text(path, buf.getvalue())

    def add_scalars(self, row: dict) -> None:
        """TensorBoard's copy of a metrics row (in tb/), where TensorBoard is installed."""
        if not self.writer or self._tb is False:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.file("tb")))
            except Exception:  # noqa: BLE001 - TensorBoard is a nicety
                self._tb = False
                return
        for key in ("loss", "ce", "corr", "val_video_acc", "val_window_acc", "lr"):
            self._tb.add_scalar(f"{row['stage']}/{key}", row[key], row["epoch"])
        self._tb.flush()

    # ---- the end

    def finish(self, model: torch.nn.Module, card: dict, report: dict, keep_states: bool = False) -> None:
        """The model and its card, the report files, then report.json (last: the run is complete)."""
        if not self.writer:
            return
        save_weights(model, self.file("model.safetensors"))
        atomic_write_text(self.file("model.json"), json.dumps(card, indent=2))
        if report.get("confusion") is not None:  # no test set (--split all): no confusion matrix
            write_report_files(self.path, report, report["classes"])
        atomic_write_text(self.file("report.json"), json.dumps(report, indent=2))
        self.drop_states(keep_states)
        if self._tb:
            self._tb.close()

    def drop_states(self, keep: bool = False) -> None:
        """A finished run needs its weights, not its optimiser states: without this, every cell
        of a study leaves ~0.5 GB (ResNet-18) behind."""
        if keep or not self.writer:
            return
        for pattern in ("*.resume.pt", "*.last.pt"):
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)
        # The joint model's best weights are model.safetensors and its last epoch is in the report;
        # stage-1 weights and the warm-up's stay (--init-from takes them).
        if self.file("model.safetensors").exists():
            for path in (self.best("stage2"), self.final("stage2")):
                path.unlink(missing_ok=True)


def write_report_files(out: Path, report: dict, classes: list[str], stem: str = "test") -> None:
    import numpy as np

    from .plots import confusion_png

    atomic_write_text(out / f"{stem}_confusion.json", json.dumps({"classes": classes, "matrix": report["confusion"]}))
    title = f"video accuracy {100 * report['video_accuracy']:.1f} % ({report['videos']} test videos)"
    confusion_png(np.array(report["confusion"]), classes, out / f"{stem}_confusion.png", title)


# --------------------------------------------------------------------------- trained models


def load_model(run: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A run's trained model (eval mode, on ``device``) and its card (model.json)."""
    run = Path(run)
    card_path = run / "model.json"
    if not card_path.exists():
        raise RunError(f"{run}: no trained model here (model.json missing); train one with `avhgr train`")
    try:
        card = json.loads(card_path.read_text())
        model = build_model(card)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{card_path}: unreadable or not an avhgr model card ({type(exc).__name__}: {exc})") from exc
    load_weights(model, run / "model.safetensors")
    return model.to(device).eval(), card
