"""The `avhgr` command line. Each command is a thin layer over a module; errors about a file
or a setting are printed as one line naming them, with exit code 2, never a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import typer

from .config import BACKBONES, CORRS, FEATURE_NORMS, FEATURE_RECIPE, FUSIONS, LEVELS, PAPER_FRACTIONS, PAPER_LAMS, PAPER_LAYERS, PAPER_RATES, QUICK_STUDY, RECIPES, SCHEDULES, SPLITS
from .datasets import DATASETS

DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda or cuda:N."

def recipe_help(key: str, text: str) -> str:
    """An option a recipe fills: its help says what each recipe gives it."""
    shown = {name: RECIPES[name][key] for name in ("avhgr", "paper")}
    features = f", {FEATURE_RECIPE[key]} on a cache of facial features" if key in FEATURE_RECIPE else ""
    return f"{text} (recipe avhgr: {shown['avhgr']}{features}; paper: {shown['paper']})"


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Audio-visual emotion recognition with Soft-HGR.")


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"avhgr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """Audio-visual emotion recognition with Soft-HGR."""


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


@contextmanager
def errors_reported(command: str, folder: Path | None = None):
    """A user error (a file, folder or setting that cannot be used: ``errors.UserError``) is one
    line and exit 2; anything else is a bug: one line saying so, its traceback kept in
    ``folder``/errors.log (or the temporary folder's avhgr-<command>-errors.log), exit 1."""
    from .errors import UserError

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except UserError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug: not the user's fault, and its traceback is what a report needs
        fail(bug_line(command, exc, folder), code=1)


def moved_to_option(command: str, option: str, positional: Path | None, given: Path | None) -> Path:
    """The path a command used to take as its first argument and now takes as ``option`` (the name
    the other commands give it): the old spelling still works for a release, with a note."""
    if positional is not None and given is not None:
        fail(f"give the path once: {option} {given} (the bare path {positional} is the older spelling)")
    if positional is not None:
        typer.echo(f"note: `avhgr {command} PATH` is now `avhgr {command} {option} PATH` (as in the other commands); "
                   "the bare path will go in a later release", err=True)  # fmt: skip
        return positional
    if given is None:
        fail(f"avhgr {command} needs {option} PATH")
    return given


def bug_line(command: str, exc: Exception, folder: Path | None = None, what: str | Path | None = None) -> str:
    """The one line for a bug, its traceback appended to ``folder``/errors.log (or the temporary
    folder's avhgr-<command>-errors.log)."""
    import tempfile

    from .errors import log_bug

    log = folder / "errors.log" if folder is not None and folder.is_dir() else Path(tempfile.gettempdir()) / f"avhgr-{command}-errors.log"
    return log_bug(log, what or f"avhgr {command}", exc)


@app.command()
def preprocess(
    dataset: Literal[DATASETS] = typer.Option(..., help="The dataset's layout (docs/usage.md); folder: root/<label>/*, csv: a manifest path,label[,subject]."),
    root: Path = typer.Option(..., help="The dataset folder as distributed (for csv: the manifest file)."),
    out: Path = typer.Option(..., help="Cache folder to write (resumable)."),
    windows: Optional[int] = typer.Option(None, help="Windows per video, the pool training draws from each epoch (default 60)."),
    window_seconds: float = typer.Option(0.5, help="Window length in seconds."),
    face_size: int = typer.Option(224, help="Side of the square face crop, pixels."),
    face_margin: float = typer.Option(0.0, help="Extra border around the detected face, as a fraction of its side."),
    detect_size: int = typer.Option(480, help="Longest side of the frame MTCNN sees (the crop comes from the full frame)."),
    min_face: int = typer.Option(40, help="Smallest face MTCNN looks for, in pixels of the downscaled frame."),
    emotions: str = typer.Option("basic6", help="basic6 (the paper's six), all, or a comma-separated list."),
    annotations: Optional[Path] = typer.Option(None, help="BAUM-1s: the annotation CSV."),
    workers: int = typer.Option(0, help="Worker processes (0: one per core, up to 8)."),
    device: str = typer.Option("auto", help="Where MTCNN runs: " + DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of the random windows."),
    overwrite: bool = typer.Option(False, help="Replace a cache made with other settings."),
    retry_failed: bool = typer.Option(False, help="Try every file that failed again (files that failed by an internal error are retried anyway)."),
    shard: Optional[str] = typer.Option(None, help="K/N: process only share K (0 <= K < N) of the files into the same (shared) cache folder; "
                                        "auto: K and N from a SLURM job array or torchrun. The process that finds every share done consolidates."),
    visual_features: Optional[Path] = typer.Option(None, help="Facial features instead of face crops: a CSV with a row per recording "
                                                   "(column 'file': its path under --root) or a folder of OpenFace per-frame CSVs."),
    feature_columns: Optional[str] = typer.Option(None, help="With --visual-features: the feature columns, comma-separated "
                                                  "(default: OpenFace's action units by name, AU01_r ... AU45_c)."),
    allow_partial_features: bool = typer.Option(False, help="With --visual-features: accept a table that names fewer than 90 % of "
                                                "the recordings (the others get no visual input)."),
):
    """Cut every video into windows: face crops (MTCNN) and log-Mel spectrograms, into a cache."""
    from .datasets import index_dataset, select_emotions
    from .distributed import resolve_device
    from .features import FeatureSettings
    from .preprocess import default_workers, parse_shard, run_preprocess
    from .visual_features import open_table

    with errors_reported("preprocess", out):
        if (feature_columns or allow_partial_features) and visual_features is None:
            fail("--feature-columns and --allow-partial-features go with --visual-features")
        videos, classes = select_emotions(index_dataset(dataset, root, annotations), emotions)
        if not videos:
            fail(f"{root}: no videos of the classes {', '.join(classes)}")
        settings = FeatureSettings(
            windows=FeatureSettings().windows if windows is None else windows, window_seconds=window_seconds, face_size=face_size, face_margin=face_margin,
            detect_size=detect_size, min_face=min_face, seed=seed,
        )  # fmt: skip
        report = run_preprocess(
            videos, classes, out, settings, root, dataset, workers or default_workers(), str(resolve_device(device)), overwrite, retry_failed=retry_failed,
            shard=parse_shard(shard), features=open_table(visual_features, columns=feature_columns.split(",") if feature_columns else None,
                                allow_partial=allow_partial_features) if visual_features else None,
        )  # fmt: skip
    if not report.get("complete", True):
        k, n = report["shard"]
        state = (f"another process ({report['consolidating']}) is consolidating the cache" if report.get("consolidating")
                 else f"{report['videos_left']} of {report['videos_requested']} files are still to do by the other shares; the last "
                      "one to finish consolidates the cache (or run avhgr preprocess without --shard on the folder)")  # fmt: skip
        typer.echo(f"{out}: share {k}/{n} done; {state}")
        return
    rate = report["face_found_rate"]
    typer.echo(
        f"{out}: {report['videos_ok']} videos, {report['windows']} windows"
        + (f", faces found in {100 * rate:.1f} % of video windows" if rate is not None else "")
        + f", {report['videos_failed']} failed (see {out / 'report.json'})"
    )
    matched = report.get("visual_features_matched")
    if matched:
        typer.echo(f"  the feature table names {matched['recordings']} of the {matched['of']} recordings "
                   f"({100 * matched['recordings'] / max(matched['of'], 1):.0f} %); the others have no visual input")
    for f in report["failed"][:10]:
        typer.echo(f"  failed: {f['path']}: {f['reason']}")


@app.command()
def inspect(
    old_cache: Optional[Path] = typer.Argument(None, hidden=True, metavar="CACHE", help="(older spelling of --cache)"),
    cache: Optional[Path] = typer.Option(None, help="A cache folder made by `avhgr preprocess` (required)."),
    out: Path = typer.Option(Path("sheet.png"), help="PNG to write."),
    per_class: int = typer.Option(4, help="Windows shown per class."),
):
    """A contact sheet of face crops and spectrograms with their labels."""
    from .cache import Cache
    from .plots import contact_sheet

    cache = moved_to_option("inspect", "--cache", old_cache, cache)
    with errors_reported("inspect"):
        path = contact_sheet(Cache.open(cache), out, per_class)
    typer.echo(f"wrote {path}")


@app.command()
def train(
    cache: Path = typer.Option(..., help="A cache made by `avhgr preprocess`."),
    out: Path = typer.Option(..., help="Run folder to write."),
    corr: Optional[Literal[CORRS]] = typer.Option(None, help=recipe_help("corr", "fgh (audio, visual, label), fg (audio, visual) or none (the paper's baseline).")),
    lam: Optional[float] = typer.Option(None, help=recipe_help("lam", "λ, the weight of the correlation loss.")),
    fusion: Optional[Literal[FUSIONS]] = typer.Option(None, help=recipe_help("fusion", "network (the paper's fusion network, trained in stage 2) or product (the stage-1 networks' answers multiplied per window; no stage 2).")),
    audio_weight: Optional[float] = typer.Option(None, help=recipe_help("audio_weight", "--fusion product: the audio network's weight w where a window has both inputs (0.5: the plain product).")),
    fusion_layers: Optional[int] = typer.Option(None, help=recipe_help("fusion_layers", "Hidden layers of the fusion network: 1, 2 or 4.")),
    epochs: Optional[int] = typer.Option(None, help=recipe_help("epochs", "Epochs of stage 1 (each network alone; a unimodal model's).")),
    joint_epochs: Optional[int] = typer.Option(None, help=recipe_help("joint_epochs", "Epochs of stage 2 (joint) after its fusion warm-up.")),
    pretrain_epochs: Optional[int] = typer.Option(None, hidden=True),
    joint_windows: Optional[str] = typer.Option(None, help=recipe_help("joint_windows", "Windows per video each stage-2 epoch: all, or N drawn anew.")),
    val_windows: Optional[str] = typer.Option(None, help=recipe_help("val_windows", "Windows per validation video: all, or the first N.")),
    batch_size: Optional[int] = typer.Option(None, help=recipe_help("batch_size", "Windows per optimiser step (shared between the processes under torchrun).")),
    lr: float = typer.Option(1e-3, help="Learning rate (Adam or AdamW) of both stages."),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batches (with --runs N: seed, seed + 1, ...)."),
    runs: int = typer.Option(1, help="Repeat with seeds seed..seed+runs-1; reports mean ± std."),
    backbone: Optional[Literal[BACKBONES]] = typer.Option(None, help=recipe_help("backbone", "The ResNet of each network.")),
    pretrained: str = typer.Option("none", help="imagenet (torchvision download), none, or a local state dict file."),
    modalities: Literal["audio,visual", "audio", "visual"] = typer.Option("audio,visual", help="Both (the paper's model), or one network alone."),
    split: Literal[SPLITS] = typer.Option("random", help="random (70/15/15 by video, the paper), actor (actor-disjoint), or all (train on every video, keep the last epoch, no test: a final model)."),
    fold: Optional[int] = typer.Option(None, help="With --split actor: this fold of a leave-subjects-out cross-validation."),
    folds: Optional[int] = typer.Option(None, help="With --fold: folds of that cross-validation, the subjects in that many groups (default 6)."),
    labeled_fraction: float = typer.Option(1.0, help="Fraction of training videos that keep labels (semi-supervised)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this run's stage-1 networks (skips stage 1)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: on CUDA and on CPUs that compute bf16 natively)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    keep_states: bool = typer.Option(False, help="Keep the optimiser states (*.last.pt) once the run is done."),
    recipe: Literal["avhgr", "paper"] = typer.Option("avhgr", help="avhgr (measured defaults, docs/training.md) or paper (the paper's literal settings)."),
    feature_norm: Optional[Literal[FEATURE_NORMS]] = typer.Option(None, help=recipe_help("feature_norm", "none (paper), batch or rescale: f and g before fusion and L_corr.")),
    lam_warmup: Optional[int] = typer.Option(None, help=recipe_help("lam_warmup", "Epochs over which λ grows from 0 at the start of stage 2.")),
    fusion_warmup: Optional[int] = typer.Option(None, help=recipe_help("fusion_warmup", "Epochs before stage 2 in which only the fusion network learns (CE alone).")),
    joint_lr: Optional[float] = typer.Option(None, help="Learning rate of stage 2 (default: the same as --lr)."),
    weight_decay: Optional[float] = typer.Option(None, help=recipe_help("weight_decay", "Decoupled weight decay (AdamW); 0: Adam.")),
    schedule: Optional[Literal[SCHEDULES]] = typer.Option(None, help=recipe_help("schedule", "constant or cosine learning rate within each stage.")),
    windows_per_epoch: Optional[str] = typer.Option(None, help=recipe_help("windows_per_epoch", "Windows per video each epoch: all cached ones, or N drawn anew each epoch.")),
    spec_augment: Optional[bool] = typer.Option(None, "--spec-augment/--no-spec-augment", help=recipe_help("spec_augment", "Time and frequency masks.")),
    face_augment: Optional[bool] = typer.Option(None, "--face-augment/--no-face-augment", help=recipe_help("face_augment", "Random flips and crops of faces.")),
    level: Optional[Literal[LEVELS]] = typer.Option(None, help=recipe_help("level", "Spectrogram level: absolute, recording or window.")),
    evidence: Optional[bool] = typer.Option(None, "--evidence/--no-evidence", help=recipe_help("evidence", "Windows without a found face have no visual input, without speech no audio input.")),
    feature_noise: Optional[float] = typer.Option(None, help=recipe_help("feature_noise", "Facial features (--visual-features caches): deviation of the noise added in training.")),
    modality_dropout: Optional[float] = typer.Option(None, help=recipe_help("modality_dropout", "Stage 2 and its fusion warm-up: share of training windows that lose one of their two inputs.")),
):
    """Train the paper's model: stage 1 (each network alone), stage 2 (joint, CE + λ·L_corr)."""
    from .stats import mean_std
    from .train import TrainConfig
    from .train import train as run_training

    if folds is not None and fold is None:
        fail("--folds needs --fold (the fold of that cross-validation to train)")
    if pretrain_epochs is not None:  # the old spelling: --pretrain-epochs P [--epochs E] is --epochs P [--joint-epochs E]
        typer.secho("note: --pretrain-epochs is now --epochs (stage 1), and stage 2's epochs are --joint-epochs", fg="yellow", err=True)
        if joint_epochs is None and epochs is not None:
            joint_epochs = epochs
        epochs = pretrain_epochs
    with errors_reported("train", out):
        cfg = TrainConfig(
            cache=str(cache), out=str(out), corr=corr, lam=lam, fusion=fusion, audio_weight=audio_weight, fusion_layers=fusion_layers, epochs=epochs, joint_epochs=joint_epochs,
            joint_windows=joint_windows, val_windows=val_windows, batch_size=batch_size, lr=lr, seed=seed, backbone=backbone,
            pretrained=pretrained, modalities=tuple(m.strip() for m in modalities.split(",")), device=device,
            split=split, fold=fold, folds=folds or 6, labeled_fraction=labeled_fraction, init_from=str(init_from) if init_from else None, amp=amp,
            keep_states=keep_states, recipe=recipe, feature_norm=feature_norm, lam_warmup=lam_warmup, fusion_warmup=fusion_warmup, joint_lr=joint_lr,
            weight_decay=weight_decay, schedule=schedule, windows_per_epoch=windows_per_epoch, spec_augment=spec_augment,
            face_augment=face_augment, level=level, evidence=evidence, feature_noise=feature_noise, modality_dropout=modality_dropout,
        )  # fmt: skip
        result = run_training(cfg, runs, resume, progress=True)
    if not result:  # not rank 0 of a torchrun job
        return
    if runs > 1 and result["mean"] is None:
        typer.echo(f"trained {runs} runs on every video (--split all, the last epoch kept): no test set  ({out})")
    elif runs > 1:
        typer.echo(f"test video accuracy over {runs} seeds: {mean_std(result['video_accuracy'])} %  ({out / 'summary.json'})")
    elif result["video_accuracy"] is None:
        typer.echo(f"trained on every video (--split all, the last epoch kept): no test set  ({out / 'model.safetensors'})")
    else:
        typer.echo(f"test video accuracy {100 * result['video_accuracy']:.2f} % on {result['videos']} videos  ({out / 'report.json'})")


@app.command()
def evaluate(
    old_run: Optional[Path] = typer.Argument(None, hidden=True, metavar="RUN", help="(older spelling of --model)"),
    run: Optional[Path] = typer.Option(None, "--model", help="A run folder made by `avhgr train`, or a folder of its --runs N (each seed, then the mean); required."),
    cache: Optional[Path] = typer.Option(None, help="The cache (default: the one the run was trained on)."),
    missing: Optional[Literal["audio", "visual", "both"]] = typer.Option(None, help="audio, visual or both (half each): a modality missing at test time."),
    rate: Optional[float] = typer.Option(None, help="With --missing: the fraction of test videos missing it (default 1: every one)."),
    seed: int = typer.Option(0, help="Seed of the choice of videos."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
):
    """Video-level test accuracy of a run, optionally with a modality missing for some videos."""
    import json

    from .evaluate import evaluate_run

    import statistics

    run = moved_to_option("evaluate", "--model", old_run, run)
    seeds = [] if (run / "config.json").exists() else sorted(p.parent for p in run.glob("*/config.json"))
    if seeds:  # a folder of `train --runs N`: every seed, then their mean
        with errors_reported("evaluate"):
            results = {p.name: evaluate_run(p, cache, missing, rate, seed, device) for p in seeds}
        accs = [100 * r["video_accuracy"] for r in results.values()]
        mean, std = statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        if json_out:
            clean = {k: {f: v for f, v in r.items() if f != "predictions"} for k, r in results.items()}
            typer.echo(json.dumps({"runs": clean, "mean_video_accuracy": mean / 100, "std_video_accuracy": std / 100}, indent=2))
            return
        for name, r in results.items():
            typer.echo(f"{name}: video accuracy {100 * r['video_accuracy']:.2f} % on {r['videos']} test videos")
        typer.echo(f"mean over {len(accs)} runs: {mean:.2f} ± {std:.2f} % (std over seeds)")
        return
    with errors_reported("evaluate"):
        result = evaluate_run(run, cache, missing, rate, seed, device)
    if json_out:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2))
        return
    what = f", {result['videos_missing']} of them missing {missing}" if result["videos_missing"] else ""
    typer.echo(f"video accuracy {100 * result['video_accuracy']:.2f} % on {result['videos']} test videos{what}")


NO_EMOTION_EXIT = 3  # predict: a file had no face and no speech the model could use (and none failed)


@app.command()
def predict(
    files: list[Path] = typer.Argument(..., help="Video (or audio) files."),
    model: Optional[str] = typer.Option(None, "--model", help="builtin (default: face and voice experts), builtin:speech, builtin:face, or a run folder of `avhgr train`."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per file."),
    timeline: bool = typer.Option(False, help="Add each window's time and prediction."),
    hop: Optional[float] = typer.Option(None, help="Windows every HOP seconds over the whole file (a regular timeline; default: random windows as in training)."),
    plot: Optional[Path] = typer.Option(None, help="PNG: each class's probability over time, face thumbnails, missing face/speech shaded (FILE_<name>.png for several files)."),
    windows: int = typer.Option(None, help="Random 0.5 s windows per file (default: as many as the model's cache had: 60 for preprocess' default and the built-in model)."),
    visual_features: Optional[Path] = typer.Option(None, help="For a model trained on facial features: the table (a CSV with a row per "
                                                   "recording, column 'file' ending each file's path, or a folder of OpenFace CSVs)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """The emotion in each file, from the same preprocessing as training.

    Windows without a face have no visual input, windows without speech no audio input; a file
    with neither anywhere gets no emotion. Exit status: 0 every file got an emotion, 1 a file
    could not be read (error), 3 a file had no face and no speech the model could use."""
    import json

    from .api import load_model
    from .errors import UserError

    with errors_reported("predict"):  # the Python API's call: what `avhgr.load_model(...).predict(...)` returns, printed
        loaded = load_model(model, device, visual_features, windows)
    if not json_out:
        typer.echo(f"({loaded.description})", err=True)
    if loaded.note:
        typer.secho(f"note: {loaded.note}", fg="yellow", err=True)
    failed = silent = 0
    for path in files:
        target = None if plot is None else plot if len(files) == 1 else plot.with_name(f"{plot.stem}_{Path(path).stem}{plot.suffix or '.png'}")
        try:
            prediction = loaded.predict(path, hop=hop, timeline=timeline, plot=target)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - a bug, not the file's fault: one line, the traceback kept, the next file
            typer.secho(f"error: {path}: {bug_line('predict', exc, what=path)}", fg="red", err=True)
            failed += 1
            continue
        result = prediction.to_dict()
        silent += result["emotion"] is None
        if json_out:
            typer.echo(json.dumps(result))
            continue
        if result["emotion"] is None:
            typer.echo(f"{path}: no emotion: {result['reason']}")
        else:
            top = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
            evidence = [f"{name} in {100 * rate:.0f} % of windows" for name, rate in (("face", result["face_rate"]), ("speech", result["speech_rate"]))
                        if rate is not None]  # fmt: skip
            typer.echo(f"{path}: {result['emotion']} {100 * top[0][1]:.0f} %  | " + "  ".join(f"{c} {100 * p:.0f}%" for c, p in top[1:4])
                       + (f"  ({', '.join(evidence)})" if evidence else ""))  # fmt: skip
        for w in result.get("timeline", []):
            what = f"{w['emotion']:10s} {100 * w['probability']:3.0f} %" if w["emotion"] else "(no face, no speech)"
            typer.echo(f"    {w['start']:7.2f}-{w['end']:.2f} s  {what}")
    if failed:
        raise typer.Exit(1)
    if silent:
        raise typer.Exit(NO_EMOTION_EXIT)


@app.command()
def watch(
    source: str = typer.Argument(..., help="A camera device, a stream URL, a file, or - for a stream on standard input."),
    model: Optional[str] = typer.Option(None, "--model", help="builtin (default: face and voice experts), builtin:speech, builtin:face, or a run folder of `avhgr train`."),
    hop: Optional[float] = typer.Option(None, help="Seconds between windows (default: the window length, 0.5 s)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Input format where FFmpeg cannot guess it: v4l2 (Linux camera), avfoundation, dshow, mpegts ..."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per window."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Live emotion, window after window, from a camera, a stream or standard input. Ends at the
    end of the stream or with Ctrl-C."""
    import json

    from .predict import Predictor
    from .watch import watch as run_watch

    with errors_reported("watch"):
        predictor = Predictor(model, device)

    def emit(w: dict) -> None:
        if json_out:
            typer.echo(json.dumps({**w, "model": predictor.description}))
        elif w["emotion"] is None:
            typer.echo(f"{w['start']:8.2f}-{w['end']:.2f} s  (no face, no speech)")
        else:
            cues = ", ".join(name for name in ("face", "speech") if w[name]) or "-"
            typer.echo(f"{w['start']:8.2f}-{w['end']:.2f} s  {w['emotion']:10s} {100 * w['probability']:3.0f} %  ({cues})")

    if not json_out:
        typer.echo(f"({predictor.description}; Ctrl-C to stop)", err=True)
    try:
        with errors_reported("watch"):
            n = run_watch(predictor, source, hop, fmt, emit)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
        return
    typer.echo(f"end of stream after {n} windows", err=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Folder for the corpus, cache, runs and report."),
    per_class: int = typer.Option(10, help="Videos per class (10: 12 validation and 12 test videos)."),
    epochs: int = typer.Option(6, help="Epochs per stage (stage 2's after its one-epoch fusion warm-up)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: where the CPU computes bfloat16 natively)."),
):
    """The whole system on a built-in corpus of generated videos, offline, on the CPU."""
    from dataclasses import replace

    from .demo import DEMO_CORPUS, run_demo

    with errors_reported("demo", out):  # e.g. --per-class too small to split
        run_demo(out, replace(DEMO_CORPUS, per_class=per_class), epochs, epochs, amp)


def _listed(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _numbers(text: str, option: str, kind=float) -> tuple:
    """``0.01,0.1,1`` as numbers; anything else refused by the parser, naming the option."""
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise typer.BadParameter(f"{text!r} is not a {'number' if kind is float else 'whole number'} or a comma-separated list of them", param_hint=option)
    return values


@app.command()
def study(
    name: Literal["stability", "missing", "semi"] = typer.Argument(..., help="stability (fusion depth x λ), missing (a modality missing) or semi (a share labelled)."),
    cache: Path = typer.Option(..., help="A cache made by `avhgr preprocess`."),
    out: Path = typer.Option(..., help="Study folder (rerun to finish what is missing)."),
    quick: bool = typer.Option(False, help="Smoke version: 1 seed, 1 epoch per stage, ResNet-18, reduced grid."),
    runs: Optional[int] = typer.Option(None, help=f"Seeds per cell (default 5, the paper's; {QUICK_STUDY['runs']} with --quick)."),
    seed: int = typer.Option(0, help="The first seed; the cells' runs take seed, seed + 1, ..."),
    epochs: Optional[int] = typer.Option(None, help=recipe_help("epochs", f"Epochs of stage 1 ({QUICK_STUDY['epochs']} with --quick).")),
    joint_epochs: Optional[int] = typer.Option(None, help=recipe_help("joint_epochs", f"Epochs of stage 2 ({QUICK_STUDY['joint_epochs']} with --quick).")),
    batch_size: Optional[int] = typer.Option(None, help=recipe_help("batch_size", f"Windows per optimiser step ({QUICK_STUDY['batch_size']} with --quick).")),
    lr: Optional[float] = typer.Option(None, help="Learning rate of both stages (default 0.001, as train's --lr)."),
    backbone: Optional[Literal[BACKBONES]] = typer.Option(None, help=recipe_help("backbone", f"The ResNet of each network ({QUICK_STUDY['backbone']} with --quick).")),
    pretrained: str = typer.Option("none", help="imagenet (torchvision download), none, or a local state dict file (as train's --pretrained)."),
    split: Literal["random", "actor"] = typer.Option("random", help="random or actor."),
    recipe: Literal["avhgr", "paper"] = typer.Option("avhgr", help="avhgr (measured defaults) or paper (the paper's literal settings)."),
    layers: Optional[str] = typer.Option(None, "--fusion-layers", "--layers", help=f"stability: fusion depths, one or a list (as train's --fusion-layers; default {_listed(PAPER_LAYERS)}, the paper's; {_listed(QUICK_STUDY['layers'])} with --quick)."),
    lams: Optional[str] = typer.Option(None, "--lam", "--lams", help=f"λ, one or a list (as train's --lam; default {_listed(PAPER_LAMS)}, the paper's; {_listed(QUICK_STUDY['lams'])} with --quick)."),
    rates: Optional[str] = typer.Option(None, "--rate", "--rates", help=f"missing: the share of test videos missing a modality, one or a list (as evaluate's --rate; default {_listed(PAPER_RATES)}; {_listed(QUICK_STUDY['rates'])} with --quick)."),
    fractions: Optional[str] = typer.Option(None, "--labeled-fraction", "--fractions", help=f"semi: the labelled share, one or a list (as train's --labeled-fraction; default {_listed(PAPER_FRACTIONS)}; {_listed(QUICK_STUDY['fractions'])} with --quick)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """The paper's studies: the stability grid, missing modalities, semi-supervised learning."""
    import sys

    from .study import STUDIES, StudyOptions

    for old, new in (("--layers", "--fusion-layers"), ("--lams", "--lam"), ("--rates", "--rate"), ("--fractions", "--labeled-fraction")):
        if any(a == old or a.startswith(old + "=") for a in sys.argv[1:]):
            typer.echo(f"note: study {old} is now {new} (the same name as in train and evaluate); {old} will go in a later release", err=True)
    given = {k: v for k, v in dict(
        runs=runs, epochs=epochs, joint_epochs=joint_epochs, batch_size=batch_size, lr=lr, backbone=backbone,
        layers=_numbers(layers, "--fusion-layers", int) if layers else None, lams=_numbers(lams, "--lam") if lams else None,
        rates=_numbers(rates, "--rate") if rates else None, fractions=_numbers(fractions, "--labeled-fraction") if fractions else None,
    ).items() if v is not None}  # fmt: skip
    common = dict(seed=seed, pretrained=pretrained, split=split, device=device, recipe=recipe)
    with errors_reported("study", out):
        opt = StudyOptions.quick(str(cache), str(out), **common, **given) if quick else StudyOptions(str(cache), str(out), **common, **given)
        out.mkdir(parents=True, exist_ok=True)
        STUDIES[name](opt)
    typer.echo(f"wrote {out / (name + '.md')}, {out / (name + '.csv')}" + (f", {out / (name + '.png')}" if name != "semi" else ""))


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", help="builtin (face and voice), builtin:speech, builtin:face, or a run folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; think before you do)."),
    port: int = typer.Option(7860, help="Port to listen on."),
    max_upload_mb: float = typer.Option(50.0, help="Largest upload accepted, in MB (larger: 413)."),
    workers: int = typer.Option(1, help="Requests computed at once (one model in memory)."),
    queue: int = typer.Option(8, help="Requests that may wait; past them: 503 with Retry-After."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """A page and an HTTP API for the model: drop a file or record from the camera, see the emotion over time."""
    from .serve import serve as run_server

    if workers < 1 or queue < 0 or max_upload_mb <= 0:
        fail("--workers must be at least 1, --queue at least 0 and --max-upload-mb positive")
    with errors_reported("serve"):
        run_server(model, host, port, max_upload_mb, workers, queue, device, log=lambda m: typer.echo(m, err=True))


def main():
    app()


if __name__ == "__main__":
    main()
