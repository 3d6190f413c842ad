"""PyAV decoding of real files in many containers, rates and layouts."""

import numpy as np
import pytest

from avhgr.decode import MediaError, probe, read_audio, read_audio_windows, read_frames_at
from avhgr.synth import tone, write_media
from conftest import face_frames, gray_frames


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


@pytest.mark.parametrize(
    "name,sr,channels",
    [("a.mp4", 44_100, 2), ("a.wav", 8_000, 1), ("a.flac", 48_000, 1), ("a.mp3", 44_100, 2), ("a.webm", 48_000, 2), ("a.mp4", 48_000, 6)],
)
def test_audio_is_48k_mono_with_pitch_kept(tmp_path, name, sr, channels):
    frames = gray_frames(10) if name.endswith((".mp4", ".webm")) else None
    path = write_media(tmp_path / name, frames, 10, tone(1.0, sr, 440.0, channels=channels), sample_rate=sr)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 48_000) < 48_000 * 0.08  # codec padding/priming allowed
    assert peak_hz(audio[4800:43200], 48_000) == pytest.approx(440.0, abs=3)
    info = probe(path)
    assert info.has_audio and info.sample_rate == sr and info.channels == channels


@pytest.mark.parametrize("name", ["v.mp4", "v.avi", "v.flv", "v.mkv", "v.webm", "v.mov"])
def test_containers_give_the_nearest_frames(tmp_path, name):
    path = write_media(tmp_path / name, gray_frames(20), 10, tone(2.0, 48_000, 300, channels=1))
    info = probe(path)
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(2.0, abs=0.15)
    times = [0.0, 0.52, 1.08, 0.31, 1.9]  # unsorted on purpose
    frames = read_frames_at(path, times)
    levels = [int(round((f.mean() - 10) / 12)) for f in frames]
    assert levels == [0, 5, 11, 3, 19]


def test_far_apart_times_use_seeking_and_stay_exact(tmp_path):
    path = write_media(tmp_path / "long.mp4", gray_frames(20, size=(32, 32)) * 1, 1, None)  # 20 s at 1 fps
    frames = read_frames_at(path, [0.9, 15.2, 3.1])
    assert [int(round((f.mean() - 10) / 12)) for f in frames] == [1, 15, 3]


def test_variable_frame_rate_uses_timestamps(tmp_path):
    times = [0.0, 0.1, 0.15, 0.9, 1.0, 1.6, 2.0]
    path = write_media(tmp_path / "vfr.mp4", gray_frames(len(times)), 10, None, frame_times=times)
    frames = read_frames_at(path, [0.12, 0.8, 1.5, 5.0])
    assert [int(round((f.mean() - 10) / 12)) for f in frames] == [1, 3, 5, 6]


def test_audio_windows_stream_and_pad(tmp_path):
    path = write_media(tmp_path / "a.wav", audio=np.linspace(-0.5, 0.5, 48_000, dtype=np.float32), sample_rate=48_000)
    windows, total = read_audio_windows(path, np.array([0.0, 0.25, 0.8]), 0.5)
    assert total == 48_000 and windows.shape == (3, 24_000)
    whole = read_audio(path)
    np.testing.assert_allclose(windows[1], whole[12_000:36_000])
    # The last window runs 0.3 s past the end: zero padded.
    np.testing.assert_allclose(windows[2, :9_600], whole[38_400:])
    assert (windows[2, 9_600:] == 0).all()


def test_video_only_and_audio_only(tmp_path):
    v = probe(write_media(tmp_path / "v.mp4", face_frames(5), 10))
    assert v.has_video and not v.has_audio
    a = probe(write_media(tmp_path / "a.flac", audio=tone(0.5, 48_000), sample_rate=48_000))
    assert a.has_audio and not a.has_video
    with pytest.raises(MediaError, match="no video stream"):
        read_frames_at(tmp_path / "a.flac", [0.1])


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(4000)), "not a readable media file"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_raise_media_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad file.mp4"
    make(path)
    with pytest.raises(MediaError, match=reason) as err:
        probe(path)
    assert str(path) in str(err.value)


def test_truncated_file_keeps_decoded_frames(tmp_path):
    path = write_media(tmp_path / "t.mp4", gray_frames(20), 10, None)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    try:
        frames = read_frames_at(cut, [0.0, 1.9])
    except MediaError as exc:  # an MP4 cut before its index cannot be opened at all: clear error
        assert str(cut) in str(exc)
    else:
        assert len(frames) == 2 and frames[0].shape == (64, 96, 3)
