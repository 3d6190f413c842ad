"""Windows and audio features.

Windows (method.md, "Preprocessing"): from each video, ``n`` windows of ``length`` seconds at
uniformly random start times, reproducible from a seed and the video's name. The key frame of
a window is the frame nearest its centre.

Clips shorter than a window (BAUM-1s has 0.43 s clips): every window starts at 0, its audio
is the whole clip zero-padded at the end to the window length, and its key frame is the frame
nearest the clip's middle.

Audio: the log Mel-spectrogram of each window, 94 Mel bands, 40 ms Hann window
(n_fft = 1920 at 48 kHz), hop 256 samples with centred frames: 94 × 94 for 0.5 s. The paper's
"10 ms overlapping" and "94 × 94" disagree for 0.5 s; hop 256 is method.md's reading.
Stored as one channel; the network copies it to three.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSettings:
    windows: int = 60  # the pool each epoch draws the recipe's windows_per_epoch from (docs/training.md, "Training recipe")
    window_seconds: float = 0.5
    sample_rate: int = 48_000
    n_mels: int = 94
    n_fft: int = 1920  # 40 ms at 48 kHz
    hop_length: int = 256
    face_size: int = 224
    face_margin: float = 0.0  # extra border around the detected box, as a fraction of its side
    detect_size: int = 480  # longest side of the frame MTCNN sees; the crop comes from the full frame
    min_face: int = 40  # smallest face MTCNN looks for, in pixels of that downscaled frame
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def spec_frames(self) -> int:
        return 1 + int(round(self.window_seconds * self.sample_rate)) // self.hop_length


def video_seed(seed: int, key: str) -> int:
    """A per-video seed that does not depend on the process or the order of videos."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_window_starts(duration: float, n: int, length: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` start times, uniform in [0, duration - length]; all 0 for clips shorter than a window."""
    room = max(duration - length, 0.0)
    return rng.uniform(0.0, room, size=n) if room > 0 else np.zeros(n)


def regular_window_starts(duration: float, hop: float, length: float) -> np.ndarray:
    """Starts 0, hop, 2·hop, ... of every window that fits in the clip (one at 0 if none does)."""
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    room = max(duration - length, 0.0)
    return np.arange(int(np.floor(room / hop + 1e-9)) + 1) * hop


def key_frame_times(starts: np.ndarray, length: float, duration: float) -> np.ndarray:
    """The centre of each window, kept inside the clip (the clip's middle when it is shorter)."""
    return np.minimum(np.asarray(starts) + length / 2, duration / 2 if duration < length else np.inf)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """The Slaney Mel scale: linear below 1 kHz (200/3 Hz per Mel), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), f / (200.0 / 3))


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@functools.lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's default Mel filterbank (``librosa.filters.mel``: Slaney scale, triangles from 0 Hz
    to Nyquist, each scaled to unit area), (n_mels, 1 + n_fft // 2) float32; a test checks it
    against librosa. Written out because importing librosa costs about 1.6 s, a third of
    `avhgr predict` on a clip."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    filters = (triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)
    filters.flags.writeable = False  # shared by every call (cached)
    return filters


MEL_CHUNK = 4


def log_mel(windows: np.ndarray, s: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Log Mel-spectrograms (dB, power) of (n, samples) windows: (n, n_mels, frames) float32.

    What ``librosa.feature.melspectrogram`` (Hann window of n_fft, centred frames zero-padded at
    the ends, power 2) and ``power_to_db(ref=1.0, amin=1e-10)`` give, to within 1e-4 dB where it
    matters (within 60 dB of the window's peak; float32 rounding below, tested),
    in numpy: without librosa's 1.6 s import on every `predict`."""
    y = np.ascontiguousarray(windows, dtype=np.float32)
    if y.ndim != 2:
        raise ValueError(f"log_mel takes (windows, samples) audio, got shape {y.shape}")
    y = np.pad(y, ((0, 0), (s.n_fft // 2, s.n_fft // 2)))
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(s.n_fft) / s.n_fft)).astype(np.float32)  # periodic, as librosa's
    filters = mel_filters(s.sample_rate, s.n_fft, s.n_mels)
    out = np.empty((len(y), s.n_mels, max(0, 1 + (y.shape[1] - s.n_fft) // s.hop_length)), np.float32)
    for i in range(0, len(y), MEL_CHUNK):  # a few windows at a time: the frames and their FFT are ~4 MB a window
        frames = np.lib.stride_tricks.sliding_window_view(y[i : i + MEL_CHUNK], s.n_fft, axis=-1)[:, :: s.hop_length]
        spec = np.fft.rfft(frames * hann, axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32, copy=False)
        out[i : i + MEL_CHUNK] = filters @ power.transpose(0, 2, 1)
    # Absolute dB (ref 1.0): loudness carries emotion, so no per-window normalisation here;
    # training standardises with the training set's mean and deviation.
    return 10.0 * np.log10(np.maximum(out, 1e-10), out=out)


# Speech detection on the log-Mel spectrogram itself, so that training (from a cache of any age),
# prediction and live streams decide alike. A frame is voice-like when its Mel power, summed over
# the bands, is above SPEECH_LEVEL_DB (in this spectrogram's dB: power of samples in [-1, 1]
# through librosa's Slaney-normalised filters; RAVDESS speech frames lie around -5 to +15 and a
# voice peaking at -50 dBFS near -10; its
# pauses below -30) and its spectral flatness over the bands is below SPEECH_FLATNESS (tonal:
# voiced speech; hiss, hum-free noise and digital silence are flat). A window has speech when at
# least SPEECH_SHARE of its frames are voice-like (50 ms of a 0.5 s window).
SPEECH_LEVEL_DB = -15.0
SPEECH_FLATNESS = 0.25
SPEECH_SHARE = 0.1


def voiced_frames(specs: np.ndarray) -> np.ndarray:
    """(n, frames) bool: which frames of (n, n_mels, frames) log-Mel spectrograms are voice-like."""
    power = np.power(10.0, np.asarray(specs, dtype=np.float32) / 10.0)
    level = 10 * np.log10(power.sum(axis=1) + 1e-12)
    flatness = np.exp(np.log(power + 1e-12).mean(axis=1)) / (power.mean(axis=1) + 1e-12)
    return (level > SPEECH_LEVEL_DB) & (flatness < SPEECH_FLATNESS)


def has_speech(specs: np.ndarray) -> np.ndarray:
    """(n,) bool: which windows have speech (see SPEECH_LEVEL_DB)."""
    if len(specs) == 0:
        return np.zeros(0, dtype=bool)
    return voiced_frames(specs).mean(axis=1) >= SPEECH_SHARE
