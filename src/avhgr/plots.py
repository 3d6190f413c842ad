"""Pictures a person would rather look at than read: contact sheets, confusion matrices, curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, out: str | Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # a strip of thumbnails sharing an axis: bbox_inches="tight" below copes
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # legends placed outside the axes stay in the picture
    plt.close(fig)
    return out


def contact_sheet(cache, out: str | Path, per_class: int = 4, seed: int = 0) -> Path:
    """Face crop and spectrogram of a few windows of each class, labelled, in one PNG."""
    rng = np.random.default_rng(seed)
    w = cache.windows
    columns = []
    for ci, name in enumerate(cache.classes):
        rows = np.flatnonzero(w["label_idx"] == ci)
        # One window per video where possible, so the sheet shows different people and takes.
        by_video = {}
        for r in rng.permutation(rows):
            by_video.setdefault(int(w["video"][r]), r)
        columns += [(name, r) for r in list(by_video.values())[:per_class]]
    if not columns:
        from .cache import CacheError

        raise CacheError(f"{cache.root}: the cache has no windows to show")
    n = len(columns)
    ncols = min(n, 8)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(2.0 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (name, r) in enumerate(columns):
        row, col = divmod(k, ncols)
        face_ax, spec_ax = axes[2 * row, col], axes[2 * row + 1, col]
        if w["face_row"][r] >= 0 and cache.visual_features is not None:  # facial features: one bar each
            face_ax.axis("on")
            face_ax.bar(np.arange(cache.visual.shape[1]), np.asarray(cache.visual[w["face_row"][r]]), color="tab:blue")
            face_ax.set_xticks([])
            flag = "" if w["face_found"][r] else " (no features)"
        elif w["face_row"][r] >= 0:
            face_ax.imshow(cache.visual[w["face_row"][r]])
            flag = "" if w["face_found"][r] else " (no face: reused box)"
        else:
            face_ax.text(0.5, 0.5, "no video", ha="center", va="center")
            flag = ""
        subject = w["subject"][r]
        face_ax.set_title(f"{name}\n{subject} t={w['key_time'][r]:.2f}s{flag}", fontsize=7)
        if w["spec_row"][r] >= 0:
            spec_ax.imshow(np.asarray(cache.spectrograms[w["spec_row"][r]], dtype=np.float32), origin="lower", aspect="auto", cmap="magma")
        else:
            spec_ax.text(0.5, 0.5, "no audio", ha="center", va="center")
    fig.suptitle(f"{Path(cache.root).name}: faces (top) and log-Mel spectrograms (below), {cache.num_windows} windows", fontsize=9)
    return _save(fig, out)


def confusion_png(matrix: np.ndarray, classes: list[str], out: str | Path, title: str = "") -> Path:
    """A confusion matrix with counts and row percentages, true classes down, predictions across."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 1.0 + 0.75 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if matrix[i, j]:
                ax.text(j, i, f"{matrix[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def heatmap_png(values: np.ndarray, rows: list[str], cols: list[str], out: str | Path, title: str = "") -> Path:
    """A table of accuracies (fractions) as a heat map with the numbers written in."""
    values = 100 * np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(cols), 0.9 + 0.42 * len(rows)))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    lo, hi = np.nanmin(values), np.nanmax(values)
    for i in range(len(rows)):
        for j in range(len(cols)):
            bright = (values[i, j] - lo) / (hi - lo + 1e-9) > 0.6
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8, color="black" if bright else "white")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def missing_png(rows: list[dict], scenarios: tuple[str, ...], out: str | Path) -> Path:
    """Accuracy against the share of test videos missing a modality: one panel per scenario."""
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.4), sharey=True, squeeze=False)
    titles = {"audio": "audio missing", "visual": "visual missing", "both": "both (half each)"}
    for ax, scenario in zip(axes[0], scenarios):
        for method, style in (("baseline", "o--"), ("fg", "s-"), ("fgh", "^-")):
            pts = sorted((r["rate"], r["mean"], r["std"]) for r in rows if r["method"] == method and r["scenario"] == scenario)
            if not pts:
                continue
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(100 * x, 100 * y, yerr=100 * e, fmt=style, capsize=3, label=method)
        ax.set_title(titles.get(scenario, scenario))
        ax.set_xlabel("test videos missing it (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("video accuracy (%)")
    axes[0][-1].legend()
    return _save(fig, out)


def timeline_png(timeline: list[dict], classes: list[str], out: str | Path, title: str = "", faces: np.ndarray | None = None,
                 window_seconds: float = 0.5) -> Path:  # fmt: skip
    """Each class's probability over time (one line per class, at each window's centre), the
    stretches where the face or the speech was missing shaded, and (``faces``, one crop per
    window) face thumbnails along the time axis. For the built-in model (entries with
    ``face_expert`` / ``voice_expert``), each expert's probability of the file's emotion, dashed
    (face) and dotted (voice)."""
    centres = np.array([(w["start"] + w["end"]) / 2 for w in timeline])
    probs = np.array([[np.nan] * len(classes) if w["probabilities"] is None else [w["probabilities"][c] for c in classes] for w in timeline])
    with_faces = faces is not None and len(faces) > 0
    fig = plt.figure(figsize=(11, 5.2 if with_faces else 4.2))
    grid = fig.add_gridspec(2 if with_faces else 1, 1, height_ratios=[4, 1] if with_faces else [1], hspace=0.05)
    ax = fig.add_subplot(grid[0])
    colours = plt.get_cmap("tab10")
    for k, c in enumerate(classes):
        ax.plot(centres, probs[:, k], marker="o", ms=3, lw=1.6, color=colours(k % 10), label=c)
    if any("face_expert" in w for w in timeline) and not np.isnan(probs).all():
        # The built-in model: what each expert said of the file's emotion, beside the combination.
        top = int(np.nanmean(probs, axis=0).argmax())
        for name, style in (("face", "--"), ("voice", ":")):
            said = [np.nan if w.get(f"{name}_expert") is None else w[f"{name}_expert"][classes[top]] for w in timeline]
            ax.plot(centres, said, ls=style, lw=1.2, color=colours(top % 10), alpha=0.8, label=f"{classes[top]}: {name} expert")
    end = max((w["end"] for w in timeline), default=window_seconds)
    for w in timeline:  # shade, per window, what was missing (None: the model does not use it)
        if w["face"] is False:
            ax.axvspan(w["start"], w["end"], ymin=0.5, ymax=1.0, color="0.85", lw=0, zorder=0)
        if w["speech"] is False:
            ax.axvspan(w["start"], w["end"], ymin=0.0, ymax=0.5, color="#f2d7d5", lw=0, zorder=0)
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(color="0.85", label="no face (top)"), Patch(color="#f2d7d5", label="no speech (bottom)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(0, end)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10)
    if with_faces:
        ax.tick_params(labelbottom=False)
        strip = fig.add_subplot(grid[1], sharex=ax)
        n = min(len(faces), 12)  # a dozen thumbnails at most, evenly spread
        for i in np.linspace(0, len(faces) - 1, n).round().astype(int):
            half = end / (2.2 * n)
            strip.imshow(faces[i], extent=(centres[i] - half, centres[i] + half, 0, 1), aspect="auto")
        strip.set_xlim(0, end)
        strip.set_yticks([])
        strip.set_xlabel("time (s)")
    else:
        ax.set_xlabel("time (s)")
    return _save(fig, out)
