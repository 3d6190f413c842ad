"""Decoding media files with PyAV (its wheel bundles FFmpeg; no system ffmpeg is needed).

Times are in seconds from the start of each stream (a stream's own start offset is
subtracted), so audio sample 0 and the first video frame are both t = 0.

Everything here streams: audio is decoded chunk by chunk and only the requested windows are
kept; frames are decoded in one forward pass and only the ones nearest the requested times
are converted to RGB, with a seek when the next requested time is far ahead. Memory stays
bounded whatever the length of the file.
"""

from __future__ import annotations

from .errors import UserError

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 48_000
# Jump ahead with a seek, rather than decoding through, when the next wanted frame is further
# than this. Short clips (every dataset of the paper) are decoded straight through.
SEEK_GAP_SECONDS = 4.0


class MediaError(UserError):
    """A file that cannot be used, with the reason: str(err) is '<path>: <reason>'."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: float  # seconds, the longer of the usable streams
    has_audio: bool
    has_video: bool
    sample_rate: int | None = None
    channels: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "no such file")
    if path.is_dir():
        raise MediaError(path, "is a directory, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise MediaError(path, f"not a readable media file ({exc.strerror or type(exc).__name__})") from exc
    except (OSError, ValueError) as exc:
        raise MediaError(path, f"cannot open ({exc})") from exc


def _stream_duration(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _scan_duration(container, stream) -> float | None:
    """Duration from the last packet's timestamp, for files whose headers do not say (no decoding)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = t if end is None else max(end, t)
    return None if end is None else end - start


_IMAGE_NAMES = {"mjpeg": "JPEG", "webp": "WebP"}


def _is_still_image(container) -> bool:
    """FFmpeg's image demuxers (png_pipe, jpeg_pipe, ..., image2): one picture, whatever the
    file's name. (GIF and APNG have demuxers of their own and stay videos.)"""
    name = container.format.name
    return name in ("image2", "image2pipe") or name.endswith("_pipe")


def probe(path: str | Path) -> MediaInfo:
    """What a file holds. Raises MediaError for files with no usable stream or no duration."""
    with _open(path) as container:
        if _is_still_image(container):
            # FFmpeg reads an image as a 0.04 s "video" at a made-up 25 fps; a still has no time
            # to cut into windows and no voice, and in a dataset it is a mistake: refuse it.
            codec = container.streams.video[0].codec_context.name if container.streams.video else "image"
            raise MediaError(path, f"a still image ({_IMAGE_NAMES.get(codec, codec.upper())}), not a video")
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        # A cover-art image in an audio file is a "video" stream of one picture: not a video.
        if video is not None and video.disposition & av.stream.Disposition.attached_pic:
            video = None
        if audio is None and video is None:
            raise MediaError(path, "no audio or video stream")
        durations = [d for s in (audio, video) if s is not None if (d := _stream_duration(s, container))]
        duration = max(durations) if durations else None
        if duration is None:
            duration = _scan_duration(container, video or audio)
        if not duration or duration <= 0 or not math.isfinite(duration):
            raise MediaError(path, "zero or unknown duration")
        info = dict(path=str(path), duration=duration, has_audio=audio is not None, has_video=video is not None)
        if audio is not None:
            info.update(sample_rate=audio.codec_context.sample_rate, channels=audio.codec_context.channels)
        if video is not None:
            rate = video.average_rate or video.guessed_rate
            info.update(fps=float(rate) if rate else None, width=video.codec_context.width, height=video.codec_context.height)
        return MediaInfo(**info)


def iter_audio(path: str | Path, sample_rate: int = SAMPLE_RATE):
    """Yield the first audio track as mono float32 chunks at ``sample_rate``, from t = 0."""
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):  # flush what the resampler holds back
                yield out.to_ndarray().reshape(-1)
        except av.error.FFmpegError as exc:
            raise MediaError(path, f"audio decoding failed ({exc.strerror or type(exc).__name__})") from exc


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole first audio track as mono float32 at ``sample_rate``."""
    chunks = list(iter_audio(path, sample_rate))
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)


def read_audio_windows(
    path: str | Path, starts: np.ndarray, length_s: float, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, int]:
    """Audio of each window [start, start + length) as an (n, length) float32 array.

    Streams the track and copies only the samples the windows need; samples past the end of
    the track stay zero (the documented padding of short clips). Returns the windows and the
    number of samples the track had.
    """
    length = int(round(length_s * sample_rate))
    starts_smp = np.round(np.asarray(starts, dtype=np.float64) * sample_rate).astype(np.int64)
    out = np.zeros((len(starts_smp), length), dtype=np.float32)
    pos = 0
    last_needed = int(starts_smp.max()) + length if len(starts_smp) else 0
    for chunk in iter_audio(path, sample_rate):
        end = pos + len(chunk)
        for i, s in enumerate(starts_smp):
            lo, hi = max(s, pos), min(s + length, end)
            if lo < hi:
                out[i, lo - s : hi - s] = chunk[lo - pos : hi - pos]
        pos = end
        if pos >= last_needed:
            break
    return out, pos


def read_frames_at(path: str | Path, times: np.ndarray | list[float]) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8 nearest to each time, in the order of ``times``.

    One forward decoding pass; a seek to the keyframe before a wanted time when it lies more
    than SEEK_GAP_SECONDS ahead. A time past the last frame gets the last frame.
    """
    times = np.asarray(times, dtype=np.float64)
    result: list[np.ndarray | None] = [None] * len(times)
    order = np.argsort(times, kind="stable")
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        k = 0  # next entry of `order` to fill
        prev = None  # (time, frame) of the last decoded frame
        decoded_any = False
        sought_for = -1  # seek at most once per wanted time: a sparse-keyframe file may land far back

        def assign(frame_time: float, frame) -> None:
            nonlocal k
            rgb = None
            while k < len(order) and frame_time is not None:
                t = times[order[k]]
                if frame_time < t:
                    break
                # The wanted time lies between prev and this frame: pick the nearer one.
                if prev is not None and (t - prev[0]) < (frame_time - t):
                    result[order[k]] = prev[2]()
                else:
                    rgb = rgb if rgb is not None else frame.to_ndarray(format="rgb24")
                    result[order[k]] = rgb
                k += 1

        try:
            demux = container.decode(stream)
            while k < len(order):
                try:
                    frame = next(demux)
                except StopIteration:
                    break
                decoded_any = True
                ft = (frame.pts * tb - start) if frame.pts is not None else (frame.time or 0.0) - start
                assign(ft, frame)
                cache: dict = {}

                def lazy_rgb(frame=frame, cache=cache):
                    if "rgb" not in cache:
                        cache["rgb"] = frame.to_ndarray(format="rgb24")
                    return cache["rgb"]

                prev = (ft, frame, lazy_rgb)
                if k < len(order) and k != sought_for and times[order[k]] - ft > SEEK_GAP_SECONDS:
                    sought_for = k
                    target = times[order[k]] + start - 1.0  # land a little before, then decode forward
                    container.seek(int(max(target, 0) / tb), stream=stream, backward=True, any_frame=False)
                    demux = container.decode(stream)
                    prev = None
        except av.error.FFmpegError as exc:
            if not decoded_any:
                raise MediaError(path, f"video decoding failed ({exc.strerror or type(exc).__name__})") from exc
            # A truncated file: keep what was decoded, fill the rest with the last good frame.
        if not decoded_any:
            raise MediaError(path, "video stream has no decodable frame")
        while k < len(order):  # wanted times past the last frame
            result[order[k]] = prev[2]() if prev is not None else None
            k += 1
    if any(r is None for r in result):
        raise MediaError(path, "could not decode frames at the requested times")
    return result  # type: ignore[return-value]
