"""Facial features instead of face crops: a table a user already has (OpenFace action units, say).

Two forms (``open_table``):

- a CSV with one row per recording: a column ``file`` naming the recording (in `preprocess`, its
  path relative to ``--root``, exactly; in `predict`, a file whose path ends in it) and numeric
  feature columns (any other column, a video name say, is left out). Every window of the
  recording gets the row.
- a folder of OpenFace per-frame CSVs (``FeatureExtraction`` output: ``frame``, ``timestamp``,
  ``confidence``, ``success`` and the AU columns), one per video, named after it (``<stem>.csv``).
  Each window gets the mean of the action units over its own frames (timestamps within the
  window) where OpenFace succeeded; a window with no such frame has no visual input, as a
  window without a found face has none.

A recording the table does not name has no visual input. One that the table names but that has
no video track (an audio file, whose face was measured on the video of the same take) becomes an
audio-visual sample: what the table says is its face.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import UserError


class FeatureTableError(UserError):
    """A feature table that cannot be used as asked."""


class FeatureTable:
    """Per-recording (``kind`` "recordings") or per-frame OpenFace (``kind`` "openface") facial features."""

    def __init__(self, source: Path, kind: str, columns: list[str], digest: str, match: str = "relative"):
        self.source, self.kind, self.columns, self.digest = Path(source), kind, columns, digest
        self.match = match  # "relative": a row's file is the recording's path under the dataset's root; "end": the path ends in it
        self._rows: dict[str, np.ndarray] = {}  # recordings: the row of each `file`, as a relative posix path
        self._by_name: dict[str, list[str]] = {}  # recordings: file name -> the `file` values ending in it
        self._frames: dict[str, Path] = {}  # openface: video stem -> its CSV

    def describe(self) -> dict:
        """What a cache records of its table (a changed table makes another cache)."""
        return {"kind": self.kind, "columns": self.columns, "sha256": self.digest, "source": self.source.name}

    def windows(self, path: str | Path, key: str | None, starts: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(features (n, D) float32, found (n,) bool) of the windows at ``starts`` of the recording
        ``path`` (``key``: its path relative to the dataset's root), or None where the table does
        not have it."""
        n = len(starts)
        if self.kind == "recordings":
            row = self.row(path, key)
            if row is None:
                return None
            return np.repeat(row[None, :], n, axis=0), np.ones(n, dtype=bool)
        frames = self._frames.get(Path(path).stem)
        if frames is None:
            return None
        times, values, ok = _read_openface(frames, self.columns)
        feats = np.zeros((n, len(self.columns)), np.float32)
        found = np.zeros(n, dtype=bool)
        for i, start in enumerate(starts):
            inside = ok & (times >= start) & (times < start + length)
            if inside.any():
                feats[i] = values[inside].mean(axis=0)
                found[i] = True
        return feats, found

    def row(self, path: str | Path, key: str | None = None) -> np.ndarray | None:
        """The row of a recording: with ``match`` "relative", the row whose ``file`` is ``key`` (the
        path relative to the dataset's root), exactly (a bare name in the table must not match
        every file of that name); with "end", the row whose ``file`` the path ends in."""
        if self.match == "relative":
            return self._rows.get(PurePosixPath(key).as_posix()) if key is not None else None
        parts = Path(path).parts
        for name in self._by_name.get(Path(path).name, []):
            tail = PurePosixPath(name).parts
            if tuple(parts[-len(tail) :]) == tail:
                return self._rows[name]
        return None


def open_table(source: str | Path, match: str = "relative") -> FeatureTable:
    """A per-recording CSV file, or a folder of OpenFace per-frame CSVs (see the module's text).
    ``match``: how a per-recording table's ``file`` finds its recording, "relative" (preprocess)
    or "end" (predict)."""
    source = Path(source)
    if source.is_dir():
        table = _openface_folder(source)
    elif not source.is_file():
        raise FeatureTableError(f"{source}: no such feature table (a CSV file, or a folder of OpenFace CSVs)")
    else:
        table = _recordings_csv(source)
    table.match = match
    return table


def _recordings_csv(path: Path) -> FeatureTable:
    raw = path.read_bytes()
    try:
        rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FeatureTableError(f"{path}: not a readable CSV ({exc})") from exc
    if not rows or "file" not in rows[0]:
        raise FeatureTableError(f"{path}: needs a column 'file' naming each recording, and a row per recording")
    columns = [c for c in rows[0] if c != "file" and all(_is_number(r.get(c)) for r in rows)]
    if not columns:
        raise FeatureTableError(f"{path}: no numeric feature column besides 'file'")
    table = FeatureTable(path, "recordings", columns, hashlib.sha256(raw).hexdigest())
    for n, r in enumerate(rows, 2):
        name = PurePosixPath(r["file"].strip().replace("\\", "/")).as_posix()
        if name in table._rows:
            raise FeatureTableError(f"{path}: line {n}: {name} appears twice")
        table._rows[name] = np.array([float(r[c]) for c in columns], dtype=np.float32)
        table._by_name.setdefault(PurePosixPath(name).name, []).append(name)
    return table


def _openface_folder(folder: Path) -> FeatureTable:
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FeatureTableError(f"{folder}: no OpenFace CSV files (one <video name>.csv per video) in this folder")
    with files[0].open(newline="", encoding="utf-8") as fh:
        header = [c.strip() for c in next(csv.reader(fh), [])]
    missing = [c for c in ("timestamp", "success") if c not in header]
    if missing:
        raise FeatureTableError(f"{files[0]}: not an OpenFace CSV (no {', '.join(missing)} column)")
    columns = [c for c in header if c.startswith("AU")]
    if not columns:
        raise FeatureTableError(f"{files[0]}: no action unit columns (AU01_r ...); run FeatureExtraction with -aus")
    digest = hashlib.sha256()
    table = FeatureTable(folder, "openface", columns, "")
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
        table._frames[f.stem] = f
    table.digest = digest.hexdigest()
    return table


def _read_openface(path: Path, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps, AU values (frames, D), success) of one OpenFace CSV (its headers have spaces)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [c.strip() for c in next(reader, [])]
        rows = [r for r in reader if r]
    index = {c: i for i, c in enumerate(header)}
    absent = [c for c in ("timestamp", "success", *columns) if c not in index]
    if absent:
        raise FeatureTableError(f"{path}: lacks the columns {', '.join(absent[:5])} that the table's other files have")
    try:
        cells = np.array([[float(r[index[c]]) for c in ("timestamp", "success", *columns)] for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise FeatureTableError(f"{path}: a value that is not a number ({exc})") from exc
    cells = cells.reshape(len(rows), 2 + len(columns))
    return cells[:, 0], cells[:, 2:].astype(np.float32), cells[:, 1] > 0.5


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
