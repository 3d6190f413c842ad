"""The preprocessing cache: what `avhgr preprocess` writes and training reads.

A finished cache folder holds

    settings.json      the feature settings, dataset, classes (a rerun must match them)
    index.csv          the videos asked for: id, path, label, subject
    videos.csv         the usable videos: id, path, label, subject, duration, has_audio, has_video
    windows.csv        one row per window: video, window, start, key_time, label, label_idx,
                       subject, face_found, has_audio, has_video, face_row, spec_row
    faces.npy          (F, S, S, 3) uint8, memory-mappable; windows without video have face_row -1
    spectrograms.npy   (A, n_mels, frames) float16; windows without audio have spec_row -1
    report.json        counts, face-detection rate, and every file that failed with its reason
    COMPLETE           written last: its presence means every file above is whole

While running, each finished video is one file under parts/, written to a temporary name and
renamed (atomic), so a run killed at any moment (even kill -9) resumes where it stopped and
never leaves a half-written result. Consolidation writes the arrays to temporary names too.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import Video

CACHE_VERSION = 1
# The last one is derived from the others by data.spectrogram_facts.
_CACHE_FILES = ("settings.json", "index.csv", "videos.csv", "windows.csv", "faces.npy", "spectrograms.npy", "report.json", "COMPLETE",
                "spectrogram_facts.npz")  # fmt: skip
WINDOW_FIELDS = (
    "video", "window", "start", "key_time", "label", "label_idx", "subject",
    "face_found", "has_audio", "has_video", "face_row", "spec_row",
)  # fmt: skip


class CacheError(RuntimeError):
    """A cache folder that cannot be written or read as asked."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one,
    never a part. On failure (disk full, no permission) the old file stays and the
    temporary one is removed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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


def part_paths(out: Path, vid: int) -> tuple[Path, Path]:
    return out / "parts" / f"{vid:06d}.npz", out / "parts" / f"{vid:06d}.fail.json"


def write_part(out: Path, vid: int, result: dict) -> None:
    """One video's result, atomically. ``result`` holds arrays and a 'meta' dict."""
    import io

    ok_path, _ = part_paths(out, vid)
    buf = io.BytesIO()
    arrays = {k: v for k, v in result.items() if k != "meta"}
    np.savez(buf, meta=np.frombuffer(json.dumps(result["meta"]).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(ok_path, buf.getvalue())


def write_failure(out: Path, vid: int, path: str, reason: str) -> None:
    _, fail_path = part_paths(out, vid)
    atomic_write_text(fail_path, json.dumps({"path": path, "reason": reason}))


def is_done(out: Path, vid: int) -> bool:
    ok_path, fail_path = part_paths(out, vid)
    return ok_path.exists() or fail_path.exists()


def read_part(out: Path, vid: int) -> dict:
    ok_path, _ = part_paths(out, vid)
    with np.load(ok_path) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = json.loads(data["meta"].tobytes().decode())
    return data


def consolidate(out: Path, videos: list[Video], classes: list[str], settings: dict, elapsed: float) -> dict:
    """Gather the parts into the memory-mappable arrays and tables, then mark COMPLETE."""
    face_size = settings["features"]["face_size"]
    failed, ok = [], []
    n_faces = n_specs = 0
    for vid, video in enumerate(videos):
        ok_path, fail_path = part_paths(out, vid)
        if ok_path.exists():
            with np.load(ok_path) as z:
                n_faces += len(z["faces"]) if "faces" in z.files else 0
                n_specs += len(z["specs"]) if "specs" in z.files else 0
            ok.append(vid)
        elif fail_path.exists():
            failed.append(json.loads(fail_path.read_text()))
        else:
            raise CacheError(f"{out}: video {vid} ({video.path}) was not processed")
    spec_shape = (settings["features"]["n_mels"], _spec_frames(settings["features"]))
    tmp_faces, tmp_specs = out / ".faces.npy.tmp", out / ".spectrograms.npy.tmp"
    faces = np.lib.format.open_memmap(tmp_faces, mode="w+", dtype=np.uint8, shape=(n_faces, face_size, face_size, 3))
    specs = np.lib.format.open_memmap(tmp_specs, mode="w+", dtype=np.float16, shape=(n_specs, *spec_shape))
    windows_rows, video_rows = [], []
    fi = si = 0
    found_total = 0
    for vid in ok:
        part = read_part(out, vid)
        meta = part["meta"]
        video = videos[vid]
        n = len(part["starts"])
        has_v, has_a = meta["has_video"], meta["has_audio"]
        if has_v:
            faces[fi : fi + n] = part["faces"]
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
    faces.flush()
    specs.flush()
    del faces, specs
    os.replace(tmp_faces, out / "faces.npy")
    os.replace(tmp_specs, out / "spectrograms.npy")
    _write_csv(out / "windows.csv", WINDOW_FIELDS, windows_rows)
    _write_csv(out / "videos.csv", ("id", "path", "label", "subject", "duration", "has_audio", "has_video"), video_rows)
    video_windows = sum(1 for r in windows_rows if r[9])
    report = {
        "videos_requested": len(videos),
        "videos_ok": len(ok),
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
    return report


def _spec_frames(features: dict) -> int:
    return 1 + int(round(features["window_seconds"] * features["sample_rate"])) // features["hop_length"]


def _write_csv(path: Path, header, rows) -> None:
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
    faces: np.ndarray
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
            faces=np.load(root / "faces.npy", mmap_mode="r"),
            spectrograms=np.load(root / "spectrograms.npy", mmap_mode="r"),
        )

    @property
    def num_windows(self) -> int:
        return len(self.windows["video"])

    def video_labels(self) -> dict[int, int]:
        return {int(v): int(l) for v, l in zip(self.windows["video"], self.windows["label_idx"])}

    def video_subjects(self) -> dict[int, str]:
        return {v["id"]: v["subject"] for v in self.videos}
