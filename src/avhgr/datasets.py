"""Dataset indexers: a dataset folder as distributed -> labelled videos (path, label, subject).

Labels map to one canonical vocabulary (CANONICAL). ``select_emotions`` keeps the classes a
run uses: the paper's six basic emotions by default, or ``all``, or a comma-separated list.
"""

from __future__ import annotations

from .errors import UserError

import csv
import re
from dataclasses import dataclass
from pathlib import Path

CANONICAL = ("neutral", "calm", "happiness", "sadness", "anger", "fear", "disgust", "surprise")
BASIC6 = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")

_ALIASES = {
    "neutral": "neutral", "neu": "neutral", "ne": "neutral",
    "calm": "calm",
    "happiness": "happiness", "happy": "happiness", "hap": "happiness", "ha": "happiness", "joy": "happiness",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "anger": "anger", "angry": "anger", "ang": "anger", "an": "anger",
    "fear": "fear", "fearful": "fear", "fea": "fear", "fe": "fear", "afraid": "fear",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust", "di": "disgust",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise", "su": "surprise",
}  # fmt: skip

MEDIA_SUFFIXES = {".mp4", ".avi", ".flv", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".wav", ".flac", ".mp3", ".m4a", ".ogg"}
RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happiness", 4: "sadness", 5: "anger", 6: "fear", 7: "disgust", 8: "surprise"}
CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}
DATASETS = ("ravdess", "enterface", "baum1s", "cremad", "csv", "folder")


class DatasetError(UserError, ValueError):
    """A dataset folder or manifest that cannot be indexed."""


@dataclass(frozen=True)
class Video:
    path: Path
    label: str  # canonical when the name is known, else the dataset's own (lower-case) word
    subject: str


def canonical_label(word: str) -> str:
    w = word.strip().lower()
    return _ALIASES.get(w, w)


def select_emotions(videos: list[Video], emotions: str = "basic6") -> tuple[list[Video], list[str]]:
    """Keep the videos of the chosen classes; returns them and the ordered class list."""
    if emotions == "basic6":
        classes = list(BASIC6)
    elif emotions == "all":
        present = {v.label for v in videos}
        classes = [c for c in CANONICAL if c in present] + sorted(present - set(CANONICAL))
    else:
        classes = [canonical_label(e) for e in emotions.split(",") if e.strip()]
        if len(set(classes)) != len(classes) or not classes:
            raise DatasetError(f"--emotions {emotions!r}: give distinct class names, 'basic6' or 'all'")
    keep = [v for v in videos if v.label in classes]
    return keep, classes


def _media_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())


_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def index_ravdess(root: Path, modality: str = "auto", channel: str = "speech") -> list[Video]:
    """RAVDESS ``MM-VV-EE-II-SS-RR-AA``: MM 01 audio-video, 02 video only, 03 audio only;
    VV 01 speech, 02 song. ``modality`` auto: the audio-video files when there are any, else
    the audio-only ones (the paper's setting is audio-video speech)."""
    parsed = []
    for p in _media_files(root):
        m = _RAVDESS.match(p.stem)
        if not m:
            continue
        mm, vv, ee, *_rest, aa = (int(x) for x in m.groups())
        if ee not in RAVDESS_EMOTIONS:
            continue
        if channel != "all" and vv != {"speech": 1, "song": 2}[channel]:
            continue
        parsed.append((mm, Video(p, RAVDESS_EMOTIONS[ee], f"actor{aa:02d}")))
    wanted = {"av": {1}, "video": {2}, "audio": {3}, "all": {1, 2, 3}}
    if modality == "auto":
        present = {mm for mm, _ in parsed}
        modality = "av" if 1 in present else ("audio" if 3 in present else "video")
    return [v for mm, v in parsed if mm in wanted[modality]]


def index_enterface(root: Path) -> list[Video]:
    """eNTERFACE'05: subject folder / emotion folder / sentence folder / clip.avi. The label is
    the emotion folder (or the clip name's code: s1_an_1.avi), the subject the top folder."""
    videos = []
    for p in _media_files(root):
        rel = p.relative_to(root).parts
        label = next((canonical_label(part) for part in rel[:-1] if canonical_label(part) in BASIC6), None)
        if label is None:  # files like s1_an_1.avi carry the code in their name
            codes = [canonical_label(tok) for tok in p.stem.lower().split("_")]
            label = next((c for c in codes if c in BASIC6), None)
        if label is None:
            continue
        subject = rel[0] if len(rel) > 1 else p.stem.split("_")[0]
        videos.append(Video(p, label, subject.lower().replace(" ", "")))
    return videos


def index_cremad(root: Path) -> list[Video]:
    """CREMA-D ``AAAA_SSS_EEE_LL``: actor, sentence, emotion (ANG DIS FEA HAP NEU SAD), level."""
    videos = []
    for p in _media_files(root):
        parts = p.stem.split("_")
        if len(parts) == 4 and parts[2] in CREMAD_EMOTIONS:
            videos.append(Video(p, CREMAD_EMOTIONS[parts[2]], parts[0]))
    return videos


def index_csv(manifest: Path) -> list[Video]:
    """A manifest ``path,label[,subject]`` (header optional); paths relative to its folder.
    Without a subject column each video is its own subject."""
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest not found")
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    videos = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise DatasetError(f"{manifest}: row {n} needs at least path,label: {row}")
        path = Path(row[0].strip())
        path = path if path.is_absolute() else manifest.parent / path
        subject = row[2].strip() if len(row) > 2 and row[2].strip() else path.stem
        videos.append(Video(path, canonical_label(row[1]), subject))
    return videos


def index_folder(root: Path) -> list[Video]:
    """``root/<label>/*``: the folder name is the label; each video is its own subject."""
    videos = []
    for p in _media_files(root):
        rel = p.relative_to(root).parts
        if len(rel) >= 2:
            videos.append(Video(p, canonical_label(rel[0]), p.stem))
    return videos


def index_baum1s(root: Path, annotations: Path | None = None) -> list[Video]:
    """BAUM-1s: clips under per-subject folders (``S001/...``) with labels in the dataset's
    annotation file. That file ships as a spreadsheet: save it as CSV with a column naming the
    clip (``clip``/``file``/``name``) and one naming the emotion (``emotion``/``label``), and
    pass it as ``annotations`` (default: the first such CSV found under ``root``)."""
    candidates = [annotations] if annotations else sorted(root.rglob("*.csv"))
    clips = {p.stem.lower(): p for p in _media_files(root)}
    for ann in candidates:
        if ann is None or not ann.is_file():
            continue
        with ann.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            name_col = next((fields[k] for k in ("clip", "file", "filename", "name", "video") if k in fields), None)
            label_col = next((fields[k] for k in ("emotion", "label", "class") if k in fields), None)
            if not name_col or not label_col:
                continue
            videos = []
            for row in reader:
                stem = Path(row[name_col].strip()).stem.lower()
                if stem in clips:
                    path = clips[stem]
                    subject = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else stem.split("_")[0]
                    videos.append(Video(path, canonical_label(row[label_col]), subject))
            return videos
    raise DatasetError(
        f"{root}: no BAUM-1s annotation CSV found (a CSV with clip and emotion columns); "
        "save the dataset's annotation spreadsheet as CSV and pass it with --annotations"
    )


def index_dataset(name: str, root: str | Path, annotations: str | Path | None = None) -> list[Video]:
    root = Path(root)
    if name == "ravdess":
        videos = index_ravdess(root)
    elif name == "enterface":
        videos = index_enterface(root)
    elif name == "baum1s":
        videos = index_baum1s(root, Path(annotations) if annotations else None)
    elif name == "cremad":
        videos = index_cremad(root)
    elif name == "csv":
        videos = index_csv(root)
    elif name == "folder":
        videos = index_folder(root)
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not videos:
        raise DatasetError(f"{root}: no {name} videos found")
    return sorted(videos, key=lambda v: str(v.path))
