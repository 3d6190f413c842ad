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

import hashlib
from dataclasses import asdict, dataclass

import librosa
import numpy as np


@dataclass(frozen=True)
class FeatureSettings:
    windows: int = 30
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


def key_frame_times(starts: np.ndarray, length: float, duration: float) -> np.ndarray:
    """The centre of each window, kept inside the clip (the clip's middle when it is shorter)."""
    return np.minimum(np.asarray(starts) + length / 2, duration / 2 if duration < length else np.inf)


def log_mel(windows: np.ndarray, s: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Log Mel-spectrograms (dB, power) of (n, samples) windows: (n, n_mels, frames) float32."""
    mel = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(windows, dtype=np.float32),
        sr=s.sample_rate,
        n_fft=s.n_fft,
        hop_length=s.hop_length,
        win_length=s.n_fft,
        window="hann",
        center=True,
        n_mels=s.n_mels,
        power=2.0,
    )
    # Absolute dB (ref 1.0): loudness carries emotion, so no per-window normalisation here;
    # training standardises with the training set's mean and deviation.
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).astype(np.float32)
