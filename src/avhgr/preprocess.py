"""From a video file to its windows: the one code path shared by `preprocess` and `predict`.

    probe -> random windows (seeded per video) -> audio windows -> log-Mel spectrograms
                                               -> key frames    -> MTCNN face crops
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .cache import (CacheError, Consolidated, ConsolidationLock, atomic_write_text, code_identity, consolidate, has_result, is_done, prepare_cache_dir, reopen,
                    retry_by_default, write_failure, write_part)  # fmt: skip
from .datasets import Video
from .decode import MediaError, probe, read_audio_windows, read_frames_at
from .errors import UserError, log_bug
from .features import FeatureSettings, key_frame_times, log_mel, regular_window_starts, sample_window_starts, video_seed


FRAME_CHUNK = 32  # windows whose key frames (a 1080p frame is 6 MB) are held at once


def process_file(path: str | Path, settings: FeatureSettings, cropper, key: str | None = None, hop: float | None = None,
                 features=None) -> dict:  # fmt: skip
    """Windows of one media file: arrays 'starts', 'key_times', 'specs' (if audio), 'visual' (face
    crops, or facial features) and 'face_found' (if it has visual input), and 'meta'. ``key``
    names the file in the window seed (default: its name), so windows do not depend on where the
    dataset lies. ``hop``: windows every ``hop`` seconds from 0 over the whole file instead of
    random ones. ``cropper`` None: no faces (the frames are not even decoded). ``features``: a
    ``visual_features.FeatureTable`` to take each window's visual input from instead of face crops
    (then a file it names is audio-visual even without a video track). Raises MediaError."""
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
    has_video = info.has_video
    if features is not None:
        looked_up = features.windows(path, key, starts, settings.window_seconds)
        has_video = looked_up is not None
        if has_video:
            result["visual"], result["face_found"] = looked_up
    elif info.has_video and cropper is not None:
        result["visual"], result["face_found"] = crop_faces(path, key_times, cropper)
    result["meta"] = {"duration": info.duration, "has_audio": has_audio, "has_video": has_video}
    return result


def process_arrays(samples: np.ndarray | None, sample_rate: int | None, frames: list[np.ndarray] | None, frame_times=None,
                   settings: FeatureSettings = FeatureSettings(), cropper=None, hop: float | None = None, key: str = "arrays") -> dict:  # fmt: skip
    """``process_file`` for media a program has decoded itself: ``samples`` ((n,) or (n, channels),
    float in [-1, 1] or int16) at ``sample_rate`` Hz, and ``frames`` (RGB (H, W, 3) uint8) shown at
    ``frame_times`` seconds (default: 25 per second from 0). Either may be None. Raises ValueError
    for arrays that cannot be media."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    audio = None
    if samples is not None:
        audio = np.asarray(samples)
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        audio = audio.astype(np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)
        if audio.ndim != 1 or not sample_rate or sample_rate <= 0:
            raise ValueError(f"samples must be (n,) or (n, channels) with a positive sample rate; got {np.shape(samples)} at {sample_rate}")
        if sample_rate != settings.sample_rate:
            ratio = Fraction(settings.sample_rate, int(sample_rate)).limit_denominator(1000)
            audio = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
        if not len(audio):
            audio = None
    if frames is not None and len(frames) == 0:
        frames = None
    if frames is not None:
        frames = [np.asarray(f) for f in frames]
        if any(f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8 for f in frames):
            raise ValueError("frames must be RGB images, (height, width, 3) uint8")
        frame_times = np.arange(len(frames)) / 25.0 if frame_times is None else np.asarray(frame_times, dtype=np.float64)
        if frame_times.shape != (len(frames),):
            raise ValueError(f"frame_times must give one time per frame ({len(frames)}); got {frame_times.shape}")
    if audio is None and frames is None:
        raise ValueError("no samples and no frames: nothing to look at or listen to")
    duration = max(len(audio) / settings.sample_rate if audio is not None else 0.0,
                   float(frame_times[-1]) + (float(np.median(np.diff(frame_times))) if len(frame_times) > 1 else 0.04) if frames is not None else 0.0)  # fmt: skip
    if hop is not None:
        starts = regular_window_starts(duration, hop, settings.window_seconds)
    else:
        starts = sample_window_starts(duration, settings.windows, settings.window_seconds, np.random.default_rng(video_seed(settings.seed, key)))
    key_times = key_frame_times(starts, settings.window_seconds, duration)
    result: dict = {"starts": starts, "key_times": key_times}
    if audio is not None:
        n = int(round(settings.window_seconds * settings.sample_rate))
        windows = np.zeros((len(starts), n), np.float32)
        for i, s in enumerate(np.round(starts * settings.sample_rate).astype(np.int64)):
            part = audio[s : s + n]
            windows[i, : len(part)] = part
        result["specs"] = log_mel(windows, settings).astype(np.float16)
    if frames is not None and cropper is not None:
        nearest = [frames[int(np.argmin(np.abs(frame_times - t)))] for t in key_times]
        result["visual"], result["face_found"] = cropper.crop_video(nearest, key_times)
    result["meta"] = {"duration": duration, "has_audio": audio is not None, "has_video": frames is not None}
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


def _init_worker(settings: FeatureSettings, device: str, threads: int, parent_pid: int | None = None, features=None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)  # first: importing torch and loading MTCNN take seconds
    import torch

    # One thread per worker: results do not depend on the thread count, and workers don't fight.
    torch.set_num_threads(threads)
    _WORKER["settings"] = settings
    _WORKER["features"] = features
    _WORKER["cropper"] = make_cropper(settings, device) if features is None else None  # a feature table needs no MTCNN


def _work(out: str, vid: int, path: str, rel_path: str) -> tuple[int, str | None]:
    """Process one video and write its part file. Returns (vid, failure reason or None)."""
    try:
        result = process_file(path, _WORKER["settings"], _WORKER["cropper"], key=rel_path, features=_WORKER["features"])
        result["meta"]["rel_path"] = rel_path
        write_part(Path(out), vid, result)
        return vid, None
    except MediaError as exc:
        reason = exc.reason
    except UserError as exc:  # the user's file (a malformed feature table, say): named, not a bug
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - any other failure of one file must not stop the run
        reason = _report_bug(Path(out), path, exc)
        write_failure(Path(out), vid, path, reason, code=code_identity())  # tried again once avhgr's code changed
        return vid, reason
    write_failure(Path(out), vid, path, reason)
    return vid, reason


def _report_bug(out: Path, path: str, exc: Exception) -> str:
    """An unexpected exception is a bug in avhgr or a library, not a property of the file: keep
    its traceback in the cache's errors.log and say so on stderr (one line), so it is neither
    hidden nor shown to the user as the file's fault. Returns the reason recorded for the file."""
    reason = log_bug(out / ERRORS_LOG, path, exc)
    print(f"warning: {path}: {reason}", file=sys.stderr, flush=True)
    return reason


def parse_shard(text: str | None, environ=os.environ) -> tuple[int, int] | None:
    """``--shard K/N`` (0 <= K < N): this process's share of the videos, or ``auto``: K and N from
    the scheduler that started it, a SLURM job array ((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) /
    SLURM_ARRAY_TASK_STEP, of SLURM_ARRAY_TASK_COUNT; an array with gaps such as 1,5,7 is not one
    share each) or torchrun (RANK of WORLD_SIZE)."""
    if text is None:
        return None
    if text == "auto":
        if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
            step = int(environ.get("SLURM_ARRAY_TASK_STEP", "1"))  # --array=0-10:2 numbers its tasks 0, 2, ... 10
            k = (int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))) // step
            n = int(environ["SLURM_ARRAY_TASK_COUNT"])
        elif "RANK" in environ and "WORLD_SIZE" in environ:
            k, n = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        else:
            raise CacheError("--shard auto: no SLURM job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) "
                             "or torchrun (RANK, WORLD_SIZE) in the environment; give --shard K/N")  # fmt: skip
    else:
        k_text, _, n_text = text.partition("/")
        if not (k_text.isdigit() and n_text.isdigit()):
            raise CacheError(f"--shard must be K/N (0 <= K < N) or auto; got {text!r}")
        k, n = int(k_text), int(n_text)
    if not 0 <= k < n:
        raise CacheError(f"--shard {k}/{n}: K must be in 0 .. N-1 (the shares of N processes are 0/N ... {n - 1}/N)")
    return k, n


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
    retry_failed: bool = False,
    shard: tuple[int, int] | None = None,
    features=None,
) -> dict:
    """Preprocess ``videos`` into the cache folder ``out`` (resumable). Returns the report, or,
    for a ``shard`` (k, n) whose share is done while others' are not, {"complete": False, ...}.

    Files that failed by an internal error (a bug, not the file's fault) are tried again on every
    rerun; ``retry_failed`` tries every failed file again, also in a finished cache. ``shard``:
    only the videos whose index is k modulo n; the process that finds every share done
    consolidates. ``features``: a ``visual_features.FeatureTable``, the visual input instead of
    face crops (recorded in the cache's settings)."""
    from tqdm import tqdm

    out = Path(out)
    root = Path(root)
    if shard is not None and overwrite:
        raise CacheError("--overwrite cannot be combined with --shard (one share would remove the others' work)")
    cache_settings = {
        "version": 1,
        "dataset": dataset,
        "classes": list(classes),
        "features": settings.as_dict(),
    }
    if features is not None:
        cache_settings["visual_features"] = features.describe()
    if overwrite and (out / "settings.json").exists():  # a cache being replaced: its old bug log too
        (out / ERRORS_LOG).unlink(missing_ok=True)
    if prepare_cache_dir(out, cache_settings, videos, overwrite):
        report = json.loads((out / "report.json").read_text())
        if not [f for f in report["failed"] if retry_failed or retry_by_default(f)]:
            return report
        lock = ConsolidationLock(out)  # reopening is the consolidator's business: one process at a time
        if not lock.acquire(steal=True):
            raise CacheError(f"{out}: another process ({lock.holder()}) is consolidating this cache; rerun when it has finished")
        try:
            if (out / "COMPLETE").exists():  # not reopened by another process in the meantime
                report = json.loads((out / "report.json").read_text())
                reopen(out, videos, report["failed"], [f for f in report["failed"] if retry_failed or retry_by_default(f)])
        finally:
            lock.release()
    consolidated = Consolidated(out)  # a reopened cache keeps its other videos in its arrays
    base = root if root.is_dir() else root.parent
    rel = [_relative(v.path, base) for v in videos]
    coverage = None
    if features is not None:  # before any work: a table keyed to another root is refused, not an audio-only cache
        from .visual_features import check_coverage

        coverage = check_coverage(features, [(v.path, r) for v, r in zip(videos, rel)])
        if progress:
            print(f"visual features for {coverage['matched']} of {coverage['files']} recordings ({features.source})", file=sys.stderr)
    mine = range(len(videos)) if shard is None else range(shard[0], len(videos), shard[1])
    todo = [i for i in mine if not is_done(out, i, consolidated, retry_failed)]
    t0 = time.time()
    title = "preprocess" if shard is None else f"preprocess {shard[0]}/{shard[1]}"
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=title, unit="video", disable=not progress)
    if workers <= 1:
        _init_worker(settings, device, threads=1, features=features)
        for i in todo:
            _work(str(out), i, str(videos[i].path), rel[i])
            bar.update(1)
    else:
        ctx = get_context("spawn")  # safe with torch; workers load MTCNN once each
        initargs = (settings, device, 1, os.getpid(), features)  # workers end with this process (die_with_parent)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
            pending = set()
            # Keep a bounded number of tasks in flight so a huge dataset does not flood memory.
            for i in todo:
                pending.add(pool.submit(_work, str(out), i, str(videos[i].path), rel[i]))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()
                        bar.update(1)
            for fut in pending:
                fut.result()
                bar.update(1)
    bar.close()
    # Consolidate once every share is done, by one process (several shards may finish at once).
    if (out / "COMPLETE").exists():  # another shard has consolidated it already
        return json.loads((out / "report.json").read_text())
    left = sum(not has_result(out, i, consolidated) for i in range(len(videos)))
    if left:
        return {"complete": False, "shard": shard, "videos_requested": len(videos), "videos_left": left}
    lock = ConsolidationLock(out)
    if not lock.acquire(steal=True):  # a holder on this machine that has died (a killed shard) is replaced
        if shard is not None:
            return {"complete": False, "shard": shard, "videos_requested": len(videos), "videos_left": 0, "consolidating": lock.holder()}
        raise CacheError(f"{out}: another process ({lock.holder()}) is consolidating this cache; rerun when it has finished "
                         f"(or, if it died on another machine, remove {lock.path})")  # fmt: skip
    try:
        if (out / "COMPLETE").exists():  # another process finished it in the meantime
            return json.loads((out / "report.json").read_text())
        report = consolidate(out, videos, list(classes), cache_settings, time.time() - t0)
        if coverage is not None:  # in the report on disk too, where a user looks later
            report["visual_features_matched"] = {"recordings": coverage["matched"], "of": coverage["files"]}
            atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    finally:
        lock.release()
    return report


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
