"""Writing real media files with PyAV: for the tests and the built-in demo corpus.

``write_media`` encodes frames and/or audio into any container PyAV can write, choosing
codecs by extension (MP4/MOV/MKV: H.264 + AAC, AVI: MPEG-4 + PCM, FLV: FLV1 + MP3,
WebM: VP8 + Opus, WAV: PCM, FLAC, MP3). ``face_photo`` is a real face photograph that ships
inside scikit-image (the astronaut Eileen Collins, public domain), so nothing is downloaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_CODECS = {
    ".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".mkv": ("libx264", "aac"),
    ".m4v": ("libx264", "aac"), ".ts": ("libx264", "aac"), ".avi": ("mpeg4", "pcm_s16le"), ".flv": ("flv", "libmp3lame"),
    ".webm": ("libvpx", "libopus"), ".wav": (None, "pcm_s16le"), ".flac": (None, "flac"),
    ".mp3": (None, "libmp3lame"),
}  # fmt: skip
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def write_media(
    path: str | Path,
    frames: Iterable[np.ndarray] | None = None,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 48_000,
    frame_times: Iterable[float] | None = None,
    crf: int = 23,
) -> Path:
    """Write ``frames`` (H, W, 3 uint8) at ``fps`` (or at explicit ``frame_times`` in seconds,
    for variable frame rate) and ``audio`` ((channels, n) or (n,) float in [-1, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec, acodec = _CODECS[path.suffix.lower()]
    if frames is not None and vcodec is None:
        raise ValueError(f"{path.suffix} holds audio only")
    # Frames are streamed (a long 1080p video does not fit in memory): peek at the first one.
    first = None
    if frames is not None:
        frames = iter(frames)
        first = next(frames, None)
        frames = itertools.chain([first], frames) if first is not None else iter(())
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if first is not None:
            h, w = first.shape[:2]
            rate = Fraction(fps).limit_denominator(1001)
            vstream = container.add_stream(vcodec, rate=rate)
            vstream.width, vstream.height = w - w % 2, h - h % 2
            vstream.pix_fmt = "yuv420p"
            if vcodec == "libx264":
                vstream.options = {"crf": str(crf), "preset": "veryfast"}
            if frame_times is not None:
                vstream.time_base = Fraction(1, 1000)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            channels = audio.shape[0]
            astream = container.add_stream(acodec, rate=sample_rate)
            astream.layout = _LAYOUTS[channels]
        times = iter(frame_times) if frame_times is not None else None
        chunk = 1024
        audio_pos = 0

        def mux_audio_until(t_end: float) -> None:
            # Interleave by time, as real files are (AVI's muxer leaves gaps otherwise).
            nonlocal audio_pos
            if astream is None:
                return
            stop = audio.shape[1] if t_end == float("inf") else min(audio.shape[1], int(t_end * sample_rate))
            while audio_pos < stop:
                block = np.ascontiguousarray(audio[:, audio_pos : audio_pos + chunk])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=_LAYOUTS[channels])
                frame.sample_rate = sample_rate
                frame.pts = audio_pos
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
                audio_pos += block.shape[1]

        if vstream is not None:
            for i, img in enumerate(frames):
                t = next(times) if times is not None else i / float(rate)
                mux_audio_until(t)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: vstream.height, : vstream.width]), format="rgb24")
                if times is not None:
                    frame.pts = int(round(t * 1000))
                    frame.time_base = Fraction(1, 1000)
                else:
                    frame.pts = i
                    frame.time_base = 1 / rate
                container.mux(vstream.encode(frame))
        mux_audio_until(float("inf"))
        if vstream is not None:
            container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
    return path


def face_photo() -> np.ndarray:
    """A real face photograph (scikit-image's astronaut, 512 × 512 RGB), shipped in the wheel."""
    from skimage import data

    return data.astronaut()


def place(canvas_hw: tuple[int, int], image: np.ndarray, center: tuple[float, float], scale: float, background: int = 235) -> np.ndarray:
    """``image`` scaled by ``scale`` and centred at ``center`` (x, y) on a plain canvas."""
    from PIL import Image

    h, w = canvas_hw
    canvas = Image.new("RGB", (w, h), (background,) * 3)
    src = Image.fromarray(image)
    size = (max(1, int(src.width * scale)), max(1, int(src.height * scale)))
    src = src.resize(size, Image.BILINEAR)
    canvas.paste(src, (int(center[0] - size[0] / 2), int(center[1] - size[1] / 2)))
    return np.asarray(canvas)


def tone(duration: float, sample_rate: int = 48_000, freq: float = 220.0, channels: int = 1, amplitude: float = 0.3) -> np.ndarray:
    """A voice-like harmonic tone (channels, n)."""
    t = np.arange(int(round(duration * sample_rate))) / sample_rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6))
    wave = amplitude * wave / np.max(np.abs(wave) + 1e-9)
    return np.repeat(wave[None, :].astype(np.float32), channels, axis=0)
