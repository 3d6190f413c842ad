"""From a video file to its windows: the one code path shared by `preprocess` and `predict`.

    probe -> random windows (seeded per video) -> audio windows -> log-Mel spectrograms
                                               -> key frames    -> MTCNN face crops
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .cache import consolidate, is_done, prepare_cache_dir, write_failure, write_part
from .datasets import Video
from .decode import MediaError, probe, read_audio_windows, read_frames_at
from .features import FeatureSettings, key_frame_times, log_mel, regular_window_starts, sample_window_starts, video_seed


FRAME_CHUNK = 32  # windows whose key frames (a 1080p frame is 6 MB) are held at once


def process_file(path: str | Path, settings: FeatureSettings, cropper, key: str | None = None, hop: float | None = None) -> dict:
    """Windows of one media file: arrays 'starts', 'key_times', 'specs' (if audio), 'faces' and
    'face_found' (if video), and 'meta'. ``key`` names the file in the window seed (default: its
    name), so windows do not depend on where the dataset lies. ``hop``: windows every ``hop``
    seconds from 0 over the whole file instead of random ones. ``cropper`` None: no faces (the
    frames are not even decoded). Raises MediaError."""
    info = probe(path)
    if hop is not None:
        starts = regular_window_starts(info.duration, hop, settings.window_seconds)
    else:
        rng = np.random.default_rng(video_seed(settings.seed, key if key is not None else Path(path).name))
        starts = sample_window_starts(info.duration, settings.windows, settings.window_seconds, rng)
    key_times = key_frame_times(starts, settings.window_seconds, info.duration)
    result: dict = {"starts": starts, "key_times": key_times}
    has_audio = info.has_audio
    if has_audio:
        audio, n_samples = read_audio_windows(path, starts, settings.window_seconds, settings.sample_rate)
        if n_samples == 0:
            has_audio = False  # an audio stream with no decodable sample: treat as missing
        else:
            result["specs"] = log_mel(audio, settings).astype(np.float16)  # log_mel bounds its own memory
    if info.has_video and cropper is not None:
        result["faces"], result["face_found"] = crop_faces(path, key_times, cropper)
    result["meta"] = {"duration": info.duration, "has_audio": has_audio, "has_video": info.has_video}
    return result


def crop_faces(path: str | Path, key_times: np.ndarray, cropper, chunk: int = FRAME_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Face crops and face-found flags for the key frames at ``key_times``.

    Up to ``chunk`` windows: one decoding pass with every frame in memory. More (a long video
    sampled densely by `predict --windows`): frames are decoded, detected and cropped ``chunk``
    at a time in time order, so memory does not grow with the window count; frames without a
    face are decoded again at the end, once the nearest window's box is known.
    """
    key_times = np.asarray(key_times, dtype=np.float64)
    n = len(key_times)
    if n <= chunk:
        return cropper.crop_video(read_frames_at(path, key_times), key_times)
    boxes: list = [None] * n
    faces = np.empty((n, cropper.face_size, cropper.face_size, 3), dtype=np.uint8)
    last_good: np.ndarray | None = None

    def frames_of(part: np.ndarray) -> list[np.ndarray]:
        nonlocal last_good
        try:
            frames = read_frames_at(path, key_times[part])
        except MediaError:
            if last_good is None:
                raise
            # A truncated file: as in one pass, windows past the break get the last good frame.
            frames = [last_good] * len(part)
        last_good = frames[-1]
        return frames

    order = np.argsort(key_times, kind="stable")
    for part in np.array_split(order, -(-n // chunk)):
        frames = frames_of(part)
        for i, frame, det in zip(part, frames, cropper.detect(frames)):
            if det is not None:
                boxes[i] = det[0]
                faces[i] = cropper.crop(frame, det[0])
        del frames, frame  # free this chunk's frames before the next is decoded
    found = np.array([b is not None for b in boxes], dtype=bool)
    missing = np.flatnonzero(~found)
    if len(missing):
        from .faces import nearest_boxes

        fill = nearest_boxes(boxes, key_times)
        last_good = None
        for part in np.array_split(missing, -(-len(missing) // chunk)):
            for i, frame in zip(part, frames_of(part)):
                faces[i] = cropper.crop(frame, fill[i])
    return faces, found


def make_cropper(settings: FeatureSettings, device: str = "cpu"):
    from .faces import FaceCropper

    return FaceCropper(settings.face_size, settings.face_margin, settings.detect_size, settings.min_face, device)


# --------------------------------------------------------------------------- workers

_WORKER: dict = {}
ERRORS_LOG = "errors.log"  # in the cache folder: tracebacks of unexpected failures (bugs)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """End this process when ``parent_pid`` (its parent) is gone, however it ended.

    A pool worker blocks reading its task pipe, and its siblings hold that pipe's other end
    open, so after a kill -9 of the parent (or the OOM killer) it would wait forever holding
    its memory. On Linux the kernel sends SIGKILL at the parent's death (PR_SET_PDEATHSIG; it
    fires when the parent *thread* that started us ends: our pool's workers are all started by
    the thread that runs the pool, as no max_tasks_per_child is set). Elsewhere, and as a
    fallback, a daemon thread polls os.getppid().
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no libc prctl: the thread below still works
    # Checked after prctl: a parent that died before it ran has already orphaned us.
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="avhgr-parent-watch", daemon=True).start()


def _init_worker(settings: FeatureSettings, device: str, threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)  # first: importing torch and loading MTCNN take seconds
    import torch

    # One thread per worker: results do not depend on the thread count, and workers don't fight.
    torch.set_num_threads(threads)
    _WORKER["settings"] = settings
    _WORKER["cropper"] = make_cropper(settings, device)


def _work(out: str, vid: int, path: str, rel_path: str) -> tuple[int, str | None]:
    """Process one video and write its part file. Returns (vid, failure reason or None)."""
    try:
        result = process_file(path, _WORKER["settings"], _WORKER["cropper"], key=rel_path)
        result["meta"]["rel_path"] = rel_path
        write_part(Path(out), vid, result)
        return vid, None
    except MediaError as exc:
        reason = exc.reason
    except Exception as exc:  # noqa: BLE001 - any other failure of one file must not stop the run
        reason = _report_bug(Path(out), path, exc)
    write_failure(Path(out), vid, path, reason)
    return vid, reason


def _report_bug(out: Path, path: str, exc: Exception) -> str:
    """An unexpected exception is a bug in avhgr or a library, not a property of the file: keep
    its traceback in the cache's errors.log and say so on stderr (one line), so it is neither
    hidden nor shown to the user as the file's fault. Returns the reason recorded for the file."""
    reason = log_bug(out / ERRORS_LOG, path, exc)
    print(f"warning: {path}: {reason}", file=sys.stderr, flush=True)
    return reason


def log_bug(log: Path, path: str | Path, exc: Exception) -> str:
    """Append ``exc``'s traceback to ``log`` (one write: processes append whole entries); the
    one-line reason to show the user."""
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"== {path}\n{''.join(traceback.format_exception(exc))}\n")
    except OSError:
        return f"internal error, a bug in avhgr ({type(exc).__name__}: {exc})"
    return f"internal error, a bug in avhgr: please report it with the traceback in {log}"


def run_preprocess(
    videos: list[Video],
    classes: list[str],
    out: str | Path,
    settings: FeatureSettings,
    root: str | Path,
    dataset: str,
    workers: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Preprocess ``videos`` into the cache folder ``out`` (resumable). Returns the report."""
    import json

    from tqdm import tqdm

    out = Path(out)
    root = Path(root)
    cache_settings = {
        "version": 1,
        "dataset": dataset,
        "classes": list(classes),
        "features": settings.as_dict(),
    }
    if overwrite and (out / "settings.json").exists():  # a cache being replaced: its old bug log too
        (out / ERRORS_LOG).unlink(missing_ok=True)
    if prepare_cache_dir(out, cache_settings, videos, overwrite):
        return json.loads((out / "report.json").read_text())
    base = root if root.is_dir() else root.parent
    rel = [_relative(v.path, base) for v in videos]
    todo = [i for i in range(len(videos)) if not is_done(out, i)]
    t0 = time.time()
    bar = tqdm(total=len(videos), initial=len(videos) - len(todo), desc="preprocess", unit="video", disable=not progress)
    failures = 0
    if workers <= 1:
        _init_worker(settings, device, threads=1)
        for i in todo:
            _, reason = _work(str(out), i, str(videos[i].path), rel[i])
            failures += reason is not None
            bar.update(1)
    else:
        ctx = get_context("spawn")  # safe with torch; workers load MTCNN once each
        initargs = (settings, device, 1, os.getpid())  # workers end with this process (die_with_parent)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
            pending = set()
            queue = iter(todo)
            # Keep a bounded number of tasks in flight so a huge dataset does not flood memory.
            for i in queue:
                pending.add(pool.submit(_work, str(out), i, str(videos[i].path), rel[i]))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        failures += fut.result()[1] is not None
                        bar.update(1)
            for fut in pending:
                failures += fut.result()[1] is not None
                bar.update(1)
    bar.close()
    return consolidate(out, videos, list(classes), cache_settings, time.time() - t0)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
