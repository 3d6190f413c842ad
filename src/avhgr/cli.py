"""The `avhgr` command line. Each command is a thin layer over a module; errors about a file
or a setting are printed as one line naming them, with exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Audio-visual emotion recognition with Soft-HGR.")


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


@app.command()
def preprocess(
    dataset: str = typer.Option(..., help="ravdess | enterface | baum1s | cremad | csv | folder"),
    root: Path = typer.Option(..., help="The dataset folder as distributed (for csv: the manifest file)."),
    out: Path = typer.Option(..., help="Cache folder to write (resumable)."),
    windows: int = typer.Option(30, help="Windows per video."),
    window_seconds: float = typer.Option(0.5, help="Window length in seconds."),
    face_size: int = typer.Option(224, help="Side of the square face crop, pixels."),
    face_margin: float = typer.Option(0.0, help="Extra border around the detected face, as a fraction of its side."),
    detect_size: int = typer.Option(480, help="Longest side of the frame MTCNN sees (the crop comes from the full frame)."),
    min_face: int = typer.Option(40, help="Smallest face MTCNN looks for, in pixels of the downscaled frame."),
    emotions: str = typer.Option("basic6", help="basic6 (the paper's six), all, or a comma-separated list."),
    annotations: Optional[Path] = typer.Option(None, help="BAUM-1s: the annotation CSV."),
    workers: int = typer.Option(0, help="Worker processes (0: one per core, up to 8)."),
    device: str = typer.Option("cpu", help="cpu or cuda (MTCNN)."),
    seed: int = typer.Option(0, help="Seed of the random windows."),
    overwrite: bool = typer.Option(False, help="Replace a cache made with other settings."),
):
    """Cut every video into windows: face crops (MTCNN) and log-Mel spectrograms, into a cache."""
    from .cache import CacheError
    from .datasets import DatasetError, index_dataset, select_emotions
    from .features import FeatureSettings
    from .preprocess import default_workers, run_preprocess

    try:
        videos, classes = select_emotions(index_dataset(dataset, root, annotations), emotions)
        if not videos:
            fail(f"{root}: no videos of the classes {', '.join(classes)}")
        settings = FeatureSettings(
            windows=windows, window_seconds=window_seconds, face_size=face_size, face_margin=face_margin,
            detect_size=detect_size, min_face=min_face, seed=seed,
        )  # fmt: skip
        report = run_preprocess(
            videos, classes, out, settings, root, dataset, workers or default_workers(), device, overwrite
        )
    except (DatasetError, CacheError) as exc:
        fail(str(exc))
    rate = report["face_found_rate"]
    typer.echo(
        f"{out}: {report['videos_ok']} videos, {report['windows']} windows"
        + (f", faces found in {100 * rate:.1f} % of video windows" if rate is not None else "")
        + f", {report['videos_failed']} failed (see {out / 'report.json'})"
    )
    for f in report["failed"][:10]:
        typer.echo(f"  failed: {f['path']}: {f['reason']}")


@app.command()
def inspect(
    cache: Path = typer.Argument(..., help="A cache folder made by `avhgr preprocess`."),
    out: Path = typer.Option(Path("sheet.png"), help="PNG to write."),
    per_class: int = typer.Option(4, help="Windows shown per class."),
):
    """A contact sheet of face crops and spectrograms with their labels."""
    from .cache import Cache, CacheError
    from .plots import contact_sheet

    try:
        path = contact_sheet(Cache.open(cache), out, per_class)
    except CacheError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}")


def main():
    app()


if __name__ == "__main__":
    main()
