"""The preprocessing cache: what `avhgr preprocess` writes and training reads.

A finished cache folder holds

    settings.json      the feature settings, dataset, classes (a rerun must match them)
    index.csv          the videos asked for: id, path, label, subject
    videos.csv         the usable videos: id, path, label, subject, duration, has_audio, has_video
    windows.csv        one row per window: video, window, start, key_time, label, label_idx,
                       subject, face_found, has_audio, has_video, face_row, spec_row
    faces.npy          (F, S, S, 3) uint8, memory-mappable; windows without video have face_row -1
                       (visual_features.npy (F, D) float32 instead, for a cache of facial features)
    spectrograms.npy   (A, n_mels, frames) float16; windows without audio have spec_row -1
    report.json        counts, face-detection rate, and every file that failed with its reason
    COMPLETE           written last: its presence means every file above is whole

While running, each finished video is one file under parts/, written to a temporary name and
renamed (atomic), so a run killed at any moment (even kill -9) resumes where it stopped and
never leaves a half-written result. Consolidation writes the arrays to temporary names too, and
takes its videos from parts/ or, for a cache reopened to retry its failed files, from the arrays
of the consolidation before (``Consolidated``): either way the same bytes.

Several processes may fill one folder at once (``preprocess --shard K/N``, one share of the videos
each, on machines that share the disk): part files never collide, and one process consolidates,
holding ``consolidating.lock``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import Video
from .errors import UserError
from .features import FeatureSettings

CACHE_VERSION = 1
_UNIQUE = f"{socket.gethostname()}.{secrets.token_hex(4)}."
# The last one is derived from the others by data.spectrogram_facts.
_CACHE_FILES = ("settings.json", "index.csv", "videos.csv", "windows.csv", "faces.npy", "visual_features.npy", "spectrograms.npy",
                "report.json", "COMPLETE", "spectrogram_facts.npz", "consolidating.lock", "consolidating.lock.takeover")  # fmt: skip
LOCK = "consolidating.lock"
# A finished cache reopened to retry files keeps its consolidated tables and arrays under these
# names until the next consolidation is complete (a kill in between must not pair old tables with
# new arrays).
PREVIOUS = ("videos.csv", "windows.csv", "faces.npy", "visual_features.npy", "spectrograms.npy")
_CACHE_FILES += tuple(f"previous.{name}" for name in PREVIOUS)
WINDOW_FIELDS = (
    "video", "window", "start", "key_time", "label", "label_idx", "subject",
    "face_found", "has_audio", "has_video", "face_row", "spec_row",
)  # fmt: skip


class CacheError(UserError, RuntimeError):
    """A cache folder that cannot be written or read as asked."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one,
    never a part. On failure (disk full, no permission) the old file stays and the
    temporary one is removed."""
    tmp = path.with_name(f".{path.name}.tmp{_UNIQUE}{os.getpid()}")  # host and a random part too: shards share disks, not PIDs
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- writing


def prepare_cache_dir(out: Path, settings: dict, videos: list[Video], overwrite: bool) -> bool:
    """Create or reopen a cache folder. Returns True when it is already complete.

    Refuses (CacheError) a folder made with other settings or another video list, unless
    ``overwrite``, which first removes the cache's own files (nothing else in the folder).
    """
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    index_text = _index_csv(videos)
    if settings_path.exists() and overwrite:
        for name in _CACHE_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "parts", ignore_errors=True)
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"{settings_path}: unreadable ({exc}); use --overwrite to start this cache again") from exc
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise CacheError(
                f"{out}: this cache was made with other settings ({shown}); "
                "use --overwrite to replace it, or another --out folder"
            )
        if (out / "index.csv").read_text(encoding="utf-8") != index_text:
            raise CacheError(f"{out}: this cache was made for another list of videos; use --overwrite or another --out folder")
        return (out / "COMPLETE").exists()
    (out / "parts").mkdir(exist_ok=True)
    atomic_write_text(out / "index.csv", index_text)
    atomic_write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True))  # last: marks the folder ours
    return False


def _index_csv(videos: list[Video]) -> str:
    lines = ["id,path,label,subject"]
    lines += [",".join(_csv_cell(x) for x in (i, v.path, v.label, v.subject)) for i, v in enumerate(videos)]
    return "\n".join(lines) + "\n"


def _csv_cell(x) -> str:
    s = str(x)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def visual_layout(settings: dict) -> tuple[str, tuple[int, ...], type]:
    """Where a cache keeps each window's visual input, its shape and type: face crops (S, S, 3)
    uint8 in faces.npy, or facial features (D,) float32 in visual_features.npy."""
    table = settings.get("visual_features")
    if table:
        return "visual_features.npy", (len(table["columns"]),), np.float32
    side = settings["features"]["face_size"]
    return "faces.npy", (side, side, 3), np.uint8


def part_paths(out: Path, vid: int) -> tuple[Path, Path]:
    return out / "parts" / f"{vid:06d}.npz", out / "parts" / f"{vid:06d}.fail.json"


def write_part(out: Path, vid: int, result: dict) -> None:
    """One video's result, atomically. ``result`` holds arrays and a 'meta' dict."""
    import io

    ok_path, fail_path = part_paths(out, vid)
    buf = io.BytesIO()
    arrays = {k: v for k, v in result.items() if k != "meta"}
    np.savez(buf, meta=np.frombuffer(json.dumps(result["meta"]).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(ok_path, buf.getvalue())
    fail_path.unlink(missing_ok=True)  # an earlier failure of this file, retried


def write_failure(out: Path, vid: int, path: str, reason: str, code: str | None = None) -> None:
    """A file's failure; ``code`` (``code_identity``) for a failure that was a bug of avhgr's."""
    _, fail_path = part_paths(out, vid)
    atomic_write_text(fail_path, json.dumps({"path": path, "reason": reason, **({"code": code} if code else {})}))


@functools.lru_cache(maxsize=1)
def code_identity() -> str:
    """avhgr's version and a digest of its sources: a bug's failure is retried once the code changed."""
    from . import __version__

    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def is_bug(failure: dict) -> bool:
    """A failure that was avhgr's own (an internal error), not the file's."""
    return failure["reason"].startswith("internal error")


def retry_by_default(failure: dict) -> bool:
    """A bug's failure is tried again by default, once avhgr's code is not the code that failed
    (a persistent bug would otherwise reopen a finished cache on every run)."""
    return is_bug(failure) and failure.get("code") != code_identity()


def has_result(out: Path, vid: int, consolidated: "Consolidated | None" = None) -> bool:
    """Whether video ``vid`` has been processed: a part file (its windows or its failure), or an
    earlier consolidation holds it."""
    ok_path, fail_path = part_paths(out, vid)
    return ok_path.exists() or fail_path.exists() or (consolidated is not None and vid in consolidated.ok)


def is_done(out: Path, vid: int, consolidated: "Consolidated | None" = None, retry_failed: bool = False) -> bool:
    """Whether a run need not process video ``vid`` (again): it has a result, unless that is a
    failure that was a bug (tried again on every run) or any failure with ``retry_failed``."""
    _, fail_path = part_paths(out, vid)
    if not has_result(out, vid, consolidated):
        return False
    if fail_path.exists() and not part_paths(out, vid)[0].exists():
        return not (retry_failed or retry_by_default(json.loads(fail_path.read_text())))
    return True


OLD_PART_KEYS = {"faces": "visual"}  # part files written before the visual input had one name for crops and features


def read_part(out: Path, vid: int) -> dict:
    ok_path, _ = part_paths(out, vid)
    with np.load(ok_path) as z:
        data = {OLD_PART_KEYS.get(k, k): z[k] for k in z.files}
    data["meta"] = json.loads(data["meta"].tobytes().decode())
    return data


class Consolidated:
    """The tables and arrays of a cache's last consolidation, read back as part files: a cache
    reopened to retry its failed files keeps every other video from here."""

    def __init__(self, out: Path):
        self.out = out
        self.ok: set[int] = set()
        if not all(self.file(name).exists() for name in ("videos.csv", "windows.csv", "spectrograms.npy")):
            return
        settings = json.loads((out / "settings.json").read_text())
        self.visual_file = visual_layout(settings)[0]
        with self.file("videos.csv").open(newline="", encoding="utf-8") as fh:
            self.videos = {int(r["id"]): r for r in csv.DictReader(fh)}
        with self.file("windows.csv").open(newline="", encoding="utf-8") as fh:
            self.windows: dict[int, list[dict]] = {}
            for r in csv.DictReader(fh):
                self.windows.setdefault(int(r["video"]), []).append(r)
        self.ok = set(self.videos)

    def file(self, name: str) -> Path:
        """The consolidated file ``name``: its copy kept by ``reopen`` where there is one."""
        kept = self.out / f"previous.{name}"
        return kept if kept.exists() else self.out / name

    def part(self, vid: int) -> dict:
        """Video ``vid`` as its part file held it (the float columns as the tables round them)."""
        video, rows = self.videos[vid], self.windows[vid]
        has_v, has_a = video["has_video"] == "1", video["has_audio"] == "1"
        part = {"starts": np.array([float(r["start"]) for r in rows]), "key_times": np.array([float(r["key_time"]) for r in rows]),
                "meta": {"duration": float(video["duration"]), "has_audio": has_a, "has_video": has_v, "rel_path": video["path"]}}  # fmt: skip
        if has_v:
            visual = np.load(self.file(self.visual_file), mmap_mode="r")
            part["visual"] = np.asarray(visual[[int(r["face_row"]) for r in rows]])
            part["face_found"] = np.array([r["face_found"] == "1" for r in rows])
        if has_a:
            specs = np.load(self.file("spectrograms.npy"), mmap_mode="r")
            part["specs"] = np.asarray(specs[[int(r["spec_row"]) for r in rows]])
        return part


def reopen(out: Path, videos: list[Video], failed: list[dict], retry: list[dict]) -> None:
    """A complete cache made incomplete again, to process the files of ``retry`` (failures of
    its report) once more: every other failure goes back to parts/, then COMPLETE goes (last:
    killed at any point, the next run reopens it again or resumes)."""
    (out / "parts").mkdir(exist_ok=True)
    ids = {str(v.path): i for i, v in enumerate(videos)}
    again = {f["path"] for f in retry}
    for failure in failed:
        if failure["path"] not in again and failure["path"] in ids:
            write_failure(out, ids[failure["path"]], failure["path"], failure["reason"], failure.get("code"))
    (out / "COMPLETE").unlink(missing_ok=True)
    for name in PREVIOUS:  # the consolidation's files, kept apart until the next one is complete
        if (out / name).exists():
            os.replace(out / name, out / f"previous.{name}")


def consolidate(out: Path, videos: list[Video], classes: list[str], settings: dict, elapsed: float) -> dict:
    """Gather the parts (and what an earlier consolidation holds) into the memory-mappable arrays
    and tables, then mark COMPLETE."""
    previous = Consolidated(out)
    visual_file, visual_shape, visual_dtype = visual_layout(settings)
    failed, parts = [], {}
    n_visual = n_specs = 0
    for vid, video in enumerate(videos):
        ok_path, fail_path = part_paths(out, vid)
        if ok_path.exists():
            with np.load(ok_path) as z:
                key = next((k for k in ("visual", "faces") if k in z.files), None)  # "faces": a part of the version before
                n_visual += len(z[key]) if key else 0
                n_specs += len(z["specs"]) if "specs" in z.files else 0
            parts[vid] = lambda vid=vid: read_part(out, vid)
        elif vid in previous.ok:
            rows = previous.windows[vid]
            n_visual += len(rows) if previous.videos[vid]["has_video"] == "1" else 0
            n_specs += len(rows) if previous.videos[vid]["has_audio"] == "1" else 0
            parts[vid] = lambda vid=vid: previous.part(vid)
        elif fail_path.exists():
            failed.append(json.loads(fail_path.read_text()))
        else:
            raise CacheError(f"{out}: video {vid} ({video.path}) was not processed")
    features = FeatureSettings(**settings["features"])
    spec_shape = (features.n_mels, features.spec_frames)
    tmp_visual, tmp_specs = out / f".{visual_file}.tmp{os.getpid()}", out / f".spectrograms.npy.tmp{os.getpid()}"
    visual = np.lib.format.open_memmap(tmp_visual, mode="w+", dtype=visual_dtype, shape=(n_visual, *visual_shape))
    specs = np.lib.format.open_memmap(tmp_specs, mode="w+", dtype=np.float16, shape=(n_specs, *spec_shape))
    windows_rows, video_rows = [], []
    fi = si = 0
    found_total = 0
    for vid, read in parts.items():
        part = read()
        meta = part["meta"]
        video = videos[vid]
        n = len(part["starts"])
        has_v, has_a = meta["has_video"], meta["has_audio"]
        if has_v:
            visual[fi : fi + n] = part["visual"]
        if has_a:
            specs[si : si + n] = part["specs"]
        found = part["face_found"] if has_v else np.zeros(n, dtype=bool)
        found_total += int(found.sum())
        for w in range(n):
            windows_rows.append(
                (vid, w, f"{part['starts'][w]:.6f}", f"{part['key_times'][w]:.6f}", video.label,
                 classes.index(video.label), video.subject, int(found[w]), int(has_a), int(has_v),
                 fi + w if has_v else -1, si + w if has_a else -1)
            )  # fmt: skip
        fi += n if has_v else 0
        si += n if has_a else 0
        video_rows.append((vid, meta["rel_path"], video.label, video.subject, f"{meta['duration']:.4f}", int(has_a), int(has_v)))
    visual.flush()
    specs.flush()
    del visual, specs
    os.replace(tmp_visual, out / visual_file)
    os.replace(tmp_specs, out / "spectrograms.npy")
    write_csv(out / "windows.csv", WINDOW_FIELDS, windows_rows)
    write_csv(out / "videos.csv", ("id", "path", "label", "subject", "duration", "has_audio", "has_video"), video_rows)
    video_windows = sum(1 for r in windows_rows if r[9])
    report = {
        "videos_requested": len(videos),
        "videos_ok": len(parts),
        "videos_failed": len(failed),
        "windows": len(windows_rows),
        "windows_with_video": video_windows,
        "windows_with_audio": sum(1 for r in windows_rows if r[8]),
        "face_found_rate": (found_total / video_windows) if video_windows else None,
        "per_class_videos": {c: sum(1 for r in video_rows if r[2] == c) for c in classes},
        "failed": failed,
        "elapsed_s": round(elapsed, 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "COMPLETE", "ok\n")
    shutil.rmtree(out / "parts", ignore_errors=True)
    for name in PREVIOUS:
        (out / f"previous.{name}").unlink(missing_ok=True)
    return report


class ConsolidationLock:
    """``consolidating.lock`` in a cache folder, held by the one process that consolidates it
    (the shards of one cache may all finish at once). ``acquire`` returns False where another
    process holds it; ``steal`` takes over a lock whose holder on this machine has died."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.held = False

    def acquire(self, steal: bool = False) -> bool:
        if self._create():
            return True
        if not steal:
            return False
        # Taking over a dead holder's lock: processes of one machine that all see it dead take turns
        # (an flock on a file beside it, released by the kernel if one dies), and each looks again
        # once it has its turn, so only the first replaces the lock; a later one finds it alive.
        import fcntl

        with open(self.path.with_name(self.path.name + ".takeover"), "a") as turn:
            fcntl.flock(turn, fcntl.LOCK_EX)
            try:
                if self.path.exists() and not self._holder_is_dead():
                    return False
                self.path.unlink(missing_ok=True)
                return self._create()
            finally:
                fcntl.flock(turn, fcntl.LOCK_UN)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{socket.gethostname()}:{os.getpid()}")
        self.held = True
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _holder_is_dead(self) -> bool:
        host, _, pid = self.holder().rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False  # another machine's process: it cannot be checked from here
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def write_csv(path: Path, header, rows) -> None:
    """A CSV file written atomically (a header row, then ``rows``)."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- reading


@dataclass
class Cache:
    """A finished cache, with its arrays memory-mapped (nothing large is read up front)."""

    root: Path
    settings: dict
    classes: list[str]
    videos: list[dict]
    windows: dict[str, np.ndarray]  # column -> array, one entry per window
    visual: np.ndarray  # per window with video: face crops (F, S, S, 3) uint8, or facial features (F, D) float32
    spectrograms: np.ndarray

    @classmethod
    def open(cls, root: str | Path) -> "Cache":
        root = Path(root)
        if not (root / "COMPLETE").exists():
            if (root / "settings.json").exists():
                raise CacheError(f"{root}: cache is not finished; run `avhgr preprocess` again to complete it")
            raise CacheError(f"{root}: not an avhgr cache (no settings.json); make one with `avhgr preprocess`")
        settings = json.loads((root / "settings.json").read_text())
        with (root / "videos.csv").open(newline="", encoding="utf-8") as fh:
            videos = [
                {**r, "id": int(r["id"]), "duration": float(r["duration"]), "has_audio": r["has_audio"] == "1", "has_video": r["has_video"] == "1"}
                for r in csv.DictReader(fh)
            ]
        with (root / "windows.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        ints = ("video", "window", "label_idx", "face_found", "has_audio", "has_video", "face_row", "spec_row")
        windows: dict[str, np.ndarray] = {}
        for field in WINDOW_FIELDS:
            col = [r[field] for r in rows]
            if field in ints:
                windows[field] = np.asarray(col, dtype=np.int64)
            elif field in ("start", "key_time"):
                windows[field] = np.asarray(col, dtype=np.float64)
            else:
                windows[field] = np.asarray(col, dtype=object)
        return cls(
            root=root,
            settings=settings,
            classes=list(settings["classes"]),
            videos=videos,
            windows=windows,
            visual=np.load(root / visual_layout(settings)[0], mmap_mode="r"),
            spectrograms=np.load(root / "spectrograms.npy", mmap_mode="r"),
        )

    def digest(self) -> str:
        """sha256 of the cache's tables and settings: two copies of one cache agree, a cache of other
        videos or windows does not (the arrays are not read: a copy is what each node should have)."""
        h = hashlib.sha256()
        for name in ("settings.json", "videos.csv", "windows.csv"):
            h.update((self.root / name).read_bytes())
        return h.hexdigest()

    @property
    def visual_features(self) -> dict | None:
        """For a cache of facial features (``--visual-features``): their columns and source; None for face crops."""
        return self.settings.get("visual_features")

    @property
    def num_windows(self) -> int:
        return len(self.windows["video"])

    def video_labels(self) -> dict[int, int]:
        return {int(v): int(l) for v, l in zip(self.windows["video"], self.windows["label_idx"])}

    def video_subjects(self) -> dict[int, str]:
        return {v["id"]: v["subject"] for v in self.videos}
