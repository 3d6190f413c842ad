"""Live prediction from anything PyAV opens: a camera, a stream URL, or a stream on standard input.

    avhgr watch - --model RUN < stream.ts            # or: ffmpeg ... -f mpegts - | avhgr watch -
    avhgr watch /dev/video0 --format v4l2 --model RUN
    avhgr watch rtsp://camera/stream                # the built-in speech model

The stream is decoded as it arrives. Window k covers [k·hop, k·hop + 0.5 s) of the stream's own
time (its start offset removed, as ``decode`` does for files); as soon as its audio and the
frame nearest its centre have arrived it gets what ``predict --hop`` computes for a file:
log-Mel spectrogram, speech test, MTCNN face, the model, one line (or JSON object) out. Only
the samples and frames that windows still to come can need are kept, so memory stays bounded
however long the stream runs. End of stream or Ctrl-C end it cleanly.

The spectrogram level (a model trained with ``--level recording``) cannot wait for the end of a
live recording: it is the level of the windows heard so far (``predict`` uses the whole file's).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator

import av
import numpy as np

from .data import level_offsets
from .decode import MediaError
from .features import has_speech, log_mel
from .predict import Predictor, Windows


MAX_LAG = 2.0  # seconds one stream may run ahead of a stalled other before windows go on without it
FRAME_REACH = 1.0  # a key frame further than this from the window's centre is no frame (a stalled video)


class StreamWindows:
    """Cuts a decoded stream into windows every ``hop`` seconds as its samples and frames arrive.

    A window is cut once its audio and the frame nearest its centre have arrived, or once the
    other stream has run MAX_LAG seconds past it (a stalled track: the window goes on without
    what is missing, and memory stays bounded)."""

    def __init__(self, window_seconds: float, hop: float, sample_rate: int, audio: bool, video: bool):
        self.length, self.hop, self.sr = window_seconds, hop, sample_rate
        self.n = int(round(window_seconds * sample_rate))
        self.has_audio, self.has_video = audio, video
        self.samples = np.zeros(0, np.float32)
        self.first_sample = 0  # index in the stream of self.samples[0]
        self.frames: deque = deque()  # (time, frame), in time order; frames before the one still needed are dropped
        self.k = 0  # next window
        self.audio_done, self.video_done = not audio, not video

    def start(self, k: int) -> float:
        return k * self.hop

    def add_samples(self, chunk: np.ndarray) -> None:
        self.samples = np.concatenate([self.samples, chunk])

    def add_frame(self, t: float, frame) -> None:
        self.frames.append((t, frame))

    def ready(self) -> bool:
        start = self.start(self.k)
        audio_time = (self.first_sample + len(self.samples)) / self.sr if self.has_audio else -np.inf
        video_time = self.frames[-1][0] if self.has_video and self.frames else -np.inf
        audio_ok = self.audio_done or audio_time * self.sr >= int(round(start * self.sr)) + self.n
        video_ok = self.video_done or video_time >= start + self.length / 2
        return bool(audio_ok and video_ok) or max(audio_time, video_time) > start + self.length + MAX_LAG

    def take(self) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """The next window: (start, its audio (n,) zero-padded past the end, its key frame as RGB)."""
        start = self.start(self.k)
        audio = frame = None
        if self.has_audio:
            lo = int(round(start * self.sr)) - self.first_sample
            audio = np.zeros(self.n, np.float32)
            part = self.samples[max(lo, 0) : lo + self.n]
            audio[: len(part)] = part
        if self.has_video and self.frames:
            frame = self._nearest(start + self.length / 2)
        self.k += 1
        self._forget()
        return start, audio, frame

    def _nearest(self, t: float):
        """The frame nearest ``t``; between two, the later one unless the earlier is strictly nearer
        (as ``decode.read_frames_at``)."""
        before = after = None
        for ft, fr in self.frames:
            if ft < t:
                before = (ft, fr)
            else:
                after = (ft, fr)
                break
        nearest = before if after is None or (before is not None and t - before[0] < after[0] - t) else after
        if abs(nearest[0] - t) > FRAME_REACH:
            return None
        return nearest[1].to_ndarray(format="rgb24")

    def _forget(self) -> None:
        keep_from = int(round(self.start(self.k) * self.sr)) - self.first_sample
        if keep_from > 0:
            self.samples = self.samples[keep_from:]
            self.first_sample += keep_from
        centre = self.start(self.k) + self.length / 2
        while len(self.frames) > 1 and self.frames[1][0] <= centre:  # the last frame before the centre stays
            self.frames.popleft()

    def finished(self, end_time: float) -> bool:
        """After the end of the stream: no window beyond the last that fits (as predict's)."""
        return self.start(self.k) > max(end_time - self.length, 0.0) + 1e-9


def open_source(source: str, fmt: str | None = None):
    try:
        if source == "-":
            return av.open(sys.stdin.buffer, mode="r", format=fmt)
        return av.open(source, mode="r", format=fmt)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(source, f"cannot open the stream ({getattr(exc, 'strerror', None) or exc})") from exc


def watch(predictor: Predictor, source: str, hop: float | None = None, fmt: str | None = None,
          emit: Callable[[dict], None] = print) -> int:  # fmt: skip
    """Predict window after window from ``source``; ``emit`` gets one dict per window. Returns
    the number of windows."""
    s = predictor.settings
    hop = hop or s.window_seconds
    container = open_source(source, fmt)
    count = 0
    with container:
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        video_stream = container.streams.video[0] if container.streams.video and "visual" in predictor.modalities else None
        if audio_stream is None and video_stream is None:
            if container.streams.video:  # a camera without sound, and an audio-only model
                raise MediaError(source, f"it has no audio stream, and the {predictor.description} hears only audio "
                                         "(pass --model RUN for a model that looks at faces)")  # fmt: skip
            raise MediaError(source, "no audio or video stream")
        cutter = StreamWindows(s.window_seconds, hop, s.sample_rate, audio_stream is not None, video_stream is not None)
        heard = RunningLevel()  # the level of the windows so far (level "recording")
        for start, audio, frame in _windows(container, audio_stream, video_stream, cutter):
            emit(_predict_window(predictor, start, audio, frame, heard))
            count += 1
    return count


def _windows(container, audio_stream, video_stream, cutter: StreamWindows) -> Iterator:
    streams = [st for st in (audio_stream, video_stream) if st is not None]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=cutter.sr) if audio_stream is not None else None
    v_start = None
    end_time = 0.0
    try:
        for packet in container.demux(*streams):
            stream = packet.stream
            for frame in packet.decode():
                if stream is audio_stream:
                    for out in resampler.resample(frame):
                        cutter.add_samples(out.to_ndarray().reshape(-1))
                    end_time = max(end_time, (cutter.first_sample + len(cutter.samples)) / cutter.sr)
                else:
                    if v_start is None:
                        v_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
                    # the arithmetic of decode.read_frames_at, so that ties between two frames break alike
                    t = (frame.pts * float(stream.time_base) - v_start) if frame.pts is not None else (frame.time or 0.0) - v_start
                    cutter.add_frame(float(t), frame)
                    end_time = max(end_time, float(t) + (1 / float(stream.average_rate) if stream.average_rate else 0.0))
                while cutter.ready() and not cutter.finished(float("inf")):
                    yield cutter.take()
    except av.error.FFmpegError:
        pass  # a stream cut off mid-packet: what arrived is used
    if resampler is not None:
        for out in resampler.resample(None):
            cutter.add_samples(out.to_ndarray().reshape(-1))
        end_time = max(end_time, (cutter.first_sample + len(cutter.samples)) / cutter.sr)
    cutter.audio_done = cutter.video_done = True
    while not cutter.finished(end_time):
        yield cutter.take()


class RunningLevel:
    """The 95th percentile of every dB value heard so far (``data.level_offsets``' recording level),
    from a histogram of 0.05 dB bins: bounded memory however long the stream."""

    LOW, HIGH, STEP = -120.0, 80.0, 0.05

    def __init__(self):
        self.counts = np.zeros(int((self.HIGH - self.LOW) / self.STEP), np.int64)

    def add(self, specs: np.ndarray) -> float:
        bins = np.clip(((np.asarray(specs, np.float32) - self.LOW) / self.STEP).astype(np.int64), 0, len(self.counts) - 1)
        self.counts += np.bincount(bins.ravel(), minlength=len(self.counts))
        cumulative = np.cumsum(self.counts)
        return self.LOW + self.STEP * (np.searchsorted(cumulative, 0.95 * cumulative[-1]) + 0.5)


def _predict_window(predictor: Predictor, start: float, audio: np.ndarray | None, frame: np.ndarray | None, heard: RunningLevel) -> dict:
    s = predictor.settings
    specs = log_mel(audio[None], s).astype(np.float16) if audio is not None else None  # as files and caches store them
    faces, found = None, np.zeros(1, bool)
    if frame is not None and predictor.feature_stats is None:  # a model of facial features has no table for a live stream
        faces, found = predictor.cropper.crop_video([frame], np.array([start + s.window_seconds / 2]))
    w = Windows(starts=np.array([start]), visual=faces, specs=specs, face=found,
                speech=has_speech(specs) if specs is not None else np.zeros(1, bool))  # fmt: skip
    levels = None
    if specs is not None:
        if predictor.level == "recording":
            levels = np.array([heard.add(specs)], np.float32)
        else:
            levels = level_offsets(specs, predictor.level)
    probs, _ = predictor.probabilities(w, levels)
    return predictor.timeline(w, probs)[0]
