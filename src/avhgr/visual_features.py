"""Facial features instead of face crops: a table a user already has (OpenFace action units, say).

Two forms (``open_table``):

- a CSV with one row per recording: a column ``file`` naming the recording (in `preprocess`, its
  path relative to ``--root``, exactly; in `predict`, a file whose path ends in it: the longest
  such row, and two rows that end it alike are refused) and the feature columns. Every window of
  the recording gets the row.
- a folder of OpenFace per-frame CSVs (``FeatureExtraction`` output: ``frame``, ``timestamp``,
  ``confidence``, ``success`` and the AU columns), one per video: at the video's own path under the
  dataset's root with ``.csv`` for its suffix (``happy/001.csv`` for ``happy/001.mp4``), or, in a flat
  folder, named after it (``001.csv``), where the name is unambiguous (two videos named ``001`` in
  two folders are refused in one line). Each window gets the mean of the action units over its own
  frames (timestamps within the window) where OpenFace succeeded; a window with no such frame has
  no visual input, as a window without a found face has none.

The features are OpenFace's action-unit columns by name (``AU01_r`` ... ``AU45_c``), or the columns
given (``--feature-columns``); a column whose name says it is a label or a subject (``emotion``,
``label``, ``actor``, ``intensity`` ...) is refused: a feature that is the answer would leak it.
``match_report`` says how many of a dataset's recordings the table names; `preprocess` refuses a
table that names fewer than ``MIN_MATCH`` of them (a table keyed to another root would otherwise
make an audio-only cache in silence) unless told ``--allow-partial-features``.

A recording the table does not name has no visual input. One that the table names but that has
no video track (an audio file, whose face was measured on the video of the same take) becomes an
audio-visual sample: what the table says is its face.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import UserError

AU_COLUMN = re.compile(r"^AU\d\d_[rc]$")  # OpenFace's action units: intensity (_r) and presence (_c)
LABEL_WORDS = {"emotion", "emotions", "label", "labels", "class", "category", "target", "actor", "subject", "speaker", "person",
               "participant", "intensity", "gender", "sex", "statement", "repetition", "sentence", "valence", "arousal"}  # fmt: skip
MIN_MATCH = 0.9  # the share of a dataset's recordings a table must name (preprocess)


class FeatureTableError(UserError):
    """A feature table that cannot be used as asked."""


class FeatureTable:
    """Per-recording (``kind`` "recordings") or per-frame OpenFace (``kind`` "openface") facial features."""

    def __init__(self, source: Path, kind: str, columns: list[str], digest: str, match: str = "relative"):
        self.source, self.kind, self.columns, self.digest = Path(source), kind, columns, digest
        self.match = match  # "relative": a row's file is the recording's path under the dataset's root; "end": the path ends in it
        self.allow_partial = False  # preprocess: accept a table that names under MIN_MATCH of the recordings
        self._rows: dict[str, np.ndarray] = {}  # recordings: the row of each `file`, as a relative posix path
        self._by_name: dict[str, list[str]] = {}  # recordings: file name -> the `file` values ending in it
        self._frames: dict[str, Path] = {}  # openface: the CSV's path under the folder, without .csv -> the CSV
        self._by_stem: dict[str, list[str]] = {}  # openface: file stem -> the keys of _frames with it

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
        frames = self.frames_file(path, key)
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
        every file of that name); with "end", the longest row whose ``file`` the path ends in (two
        of that length: refused, the table does not say which)."""
        if self.match == "relative":
            return self._rows.get(PurePosixPath(key).as_posix()) if key is not None else None
        name = _longest_ending(Path(path).parts, self._by_name.get(Path(path).name, []), self.source, path)
        return None if name is None else self._rows[name]

    def frames_file(self, path: str | Path, key: str | None = None) -> Path | None:
        """A video's OpenFace CSV: the one at its own relative path (``key`` without its suffix), else,
        by the path's end, the longest match (a flat folder: by name), refused where two tie."""
        if key is not None:
            exact = PurePosixPath(key).with_suffix("").as_posix()
            if exact in self._frames:
                return self._frames[exact]
        stem = Path(path).stem
        parts = (*Path(path).parent.parts, stem)
        name = _longest_ending(parts, self._by_stem.get(stem, []), self.source, path)
        return None if name is None else self._frames[name]

    def has(self, path: str | Path, key: str | None = None) -> bool:
        return (self.row(path, key) if self.kind == "recordings" else self.frames_file(path, key)) is not None

    def match_report(self, files: list[tuple[Path, str | None]]) -> dict:
        """How many of ``files`` ((path, path under the root) pairs) the table names, a few that it
        does not, and, for a folder of OpenFace CSVs, refused in one line: one CSV taken by two
        videos (a flat folder, two videos of one name in two folders)."""
        taken: dict[Path, list[str]] = {}
        missing = []
        for path, key in files:
            found = self.row(path, key) is not None if self.kind == "recordings" else self.frames_file(path, key)
            if found is None or found is False:
                missing.append(key or str(path))
            elif self.kind == "openface":
                taken.setdefault(found, []).append(key or str(path))
        shared = next(((csv, names) for csv, names in taken.items() if len(names) > 1), None)
        if shared:
            raise FeatureTableError(f"{shared[0]}: one OpenFace CSV for {len(shared[1])} videos ({', '.join(shared[1][:3])}); "
                                    f"lay the folder out as the dataset is (one CSV at each video's own path, .csv for its suffix)")  # fmt: skip
        return {"matched": len(files) - len(missing), "files": len(files), "unmatched": missing[:5]}


def _longest_ending(parts: tuple, candidates: list[str], source: Path, path) -> str | None:
    """The candidate (a posix path) that ``parts`` ends in with the most components; None if none;
    refused where two of that length do (the table does not say which row is this file's)."""
    ends = [c for c in candidates if tuple(parts[-len(PurePosixPath(c).parts) :]) == PurePosixPath(c).parts]
    if not ends:
        return None
    longest = max(len(PurePosixPath(c).parts) for c in ends)
    best = [c for c in ends if len(PurePosixPath(c).parts) == longest]
    if len(best) > 1:
        raise FeatureTableError(f"{source}: {path} matches {len(best)} entries equally ({', '.join(best[:3])}); name it by a longer path")
    return best[0]


def select_columns(header: list[str], given: list[str] | None, source: Path) -> list[str]:
    """The feature columns: ``given`` (each must be in ``header``), else OpenFace's action units by
    name; refused where a column's name says it is a label or a subject."""
    columns = list(given) if given else [c for c in header if AU_COLUMN.match(c)]
    absent = [c for c in columns if c not in header]
    if absent:
        raise FeatureTableError(f"{source}: no column {', '.join(absent[:3])} (it has {', '.join(header[:6])} ...)")
    if not columns:
        raise FeatureTableError(f"{source}: no action-unit columns (AU01_r ... AU45_c); name the feature columns with --feature-columns")
    leaks = [c for c in columns if LABEL_WORDS & {w.lower() for w in re.split(r"[^A-Za-z]+", c) if w}]
    if leaks:
        raise FeatureTableError(f"{source}: column {leaks[0]} names a label or a subject, not a facial feature; "
                                "a feature that is the answer would leak it (leave it out of --feature-columns)")  # fmt: skip
    return columns


def open_table(source: str | Path, match: str = "relative", columns: list[str] | None = None, allow_partial: bool = False) -> FeatureTable:
    """A per-recording CSV file, or a folder of OpenFace per-frame CSVs (see the module's text).
    ``match``: how a per-recording table's ``file`` finds its recording, "relative" (preprocess)
    or "end" (predict). ``columns``: the feature columns (default: the action units by name).
    ``allow_partial``: `preprocess` accepts a table that names fewer than ``MIN_MATCH`` of the recordings."""
    source = Path(source)
    if source.is_dir():
        table = _openface_folder(source, columns)
    elif not source.is_file():
        raise FeatureTableError(f"{source}: no such feature table (a CSV file, or a folder of OpenFace CSVs)")
    else:
        table = _recordings_csv(source, columns)
    table.match, table.allow_partial = match, allow_partial
    return table


def check_coverage(table: FeatureTable, files: list[tuple[Path, str]]) -> dict:
    """``match_report`` of a dataset's files, refused in one line where the table names fewer than
    ``MIN_MATCH`` of them (unless the table was opened ``allow_partial``)."""
    report = table.match_report(files)
    share = report["matched"] / max(report["files"], 1)
    if share < MIN_MATCH and not table.allow_partial:
        example = f" (e.g. {report['unmatched'][0]})" if report["unmatched"] else ""
        raise FeatureTableError(f"{table.source}: names {report['matched']} of the {report['files']} recordings ({100 * share:.0f} %, "
                                f"under {100 * MIN_MATCH:.0f} %){example}: is it keyed to another --root? "
                                "Give --allow-partial-features to use it anyway (the others get no visual input)")  # fmt: skip
    return report


def _recordings_csv(path: Path, given: list[str] | None = None) -> FeatureTable:
    raw = path.read_bytes()
    try:
        rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FeatureTableError(f"{path}: not a readable CSV ({exc})") from exc
    if not rows or "file" not in rows[0]:
        raise FeatureTableError(f"{path}: needs a column 'file' naming each recording, and a row per recording")
    columns = select_columns([c for c in rows[0] if c != "file"], given, path)
    text = [c for c in columns if not all(_is_number(r.get(c)) for r in rows)]
    if text:
        bad = next(n for n, r in enumerate(rows, 2) if not _is_number(r.get(text[0])))
        raise FeatureTableError(f"{path}: line {bad}: column {text[0]} is not a number there ({rows[bad - 2].get(text[0])!r})")
    table = FeatureTable(path, "recordings", columns, hashlib.sha256(raw).hexdigest())
    for n, r in enumerate(rows, 2):
        name = PurePosixPath(r["file"].strip().replace("\\", "/")).as_posix()
        if name in table._rows:
            raise FeatureTableError(f"{path}: line {n}: {name} appears twice")
        table._rows[name] = np.array([float(r[c]) for c in columns], dtype=np.float32)
        table._by_name.setdefault(PurePosixPath(name).name, []).append(name)
    return table


def _openface_folder(folder: Path, given: list[str] | None = None) -> FeatureTable:
    files = sorted(folder.rglob("*.csv"))
    if not files:
        raise FeatureTableError(f"{folder}: no OpenFace CSV files (one <video name>.csv per video) in this folder")
    with files[0].open(newline="", encoding="utf-8") as fh:
        header = [c.strip() for c in next(csv.reader(fh), [])]
    missing = [c for c in ("timestamp", "success") if c not in header]
    if missing:
        raise FeatureTableError(f"{files[0]}: not an OpenFace CSV (no {', '.join(missing)} column)")
    columns = select_columns(header, given, files[0])
    digest = hashlib.sha256()
    table = FeatureTable(folder, "openface", columns, "")
    for f in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        digest.update((f.name if f.parent == folder else key).encode() + b"\0" + f.read_bytes())  # a flat folder digests as before
        table._frames[key] = f
        table._by_stem.setdefault(f.stem, []).append(key)
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
