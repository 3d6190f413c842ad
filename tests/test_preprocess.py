"""From files to the cache: windows, spectrograms, faces, bad files, resume after kill -9."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import face_frames

from avhgr.cache import Cache, CacheError
from avhgr.datasets import index_dataset, select_emotions
from avhgr.features import FeatureSettings, key_frame_times, log_mel, sample_window_starts, video_seed
from avhgr.faces import nearest_boxes
from avhgr.preprocess import crop_faces, make_cropper, run_preprocess
from avhgr.synth import write_media

SMALL = FeatureSettings(windows=4, face_size=48)


def test_windows_are_reproducible_uniform_and_padded():
    a = sample_window_starts(3.0, 30, 0.5, np.random.default_rng(video_seed(0, "x.mp4")))
    b = sample_window_starts(3.0, 30, 0.5, np.random.default_rng(video_seed(0, "x.mp4")))
    c = sample_window_starts(3.0, 30, 0.5, np.random.default_rng(video_seed(1, "x.mp4")))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 2.5 and len(np.unique(a)) == 30
    short = sample_window_starts(0.43, 30, 0.5, np.random.default_rng(0))
    assert (short == 0).all()
    np.testing.assert_allclose(key_frame_times(short, 0.5, 0.43), 0.215)
    np.testing.assert_allclose(key_frame_times(a, 0.5, 3.0), a + 0.25)


def test_log_mel_is_94_by_94_and_sees_pitch():
    s = FeatureSettings()
    t = np.arange(24_000) / 48_000
    low, high = np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 4000 * t)
    spec = log_mel(np.stack([low, high]).astype(np.float32), s)
    assert spec.shape == (2, 94, 94) and spec.dtype == np.float32
    assert spec[0].mean(axis=1).argmax() < spec[1].mean(axis=1).argmax()


@pytest.mark.parametrize("settings", [FeatureSettings(), FeatureSettings(n_mels=64, n_fft=1024, hop_length=160, sample_rate=16_000),
                                      FeatureSettings(n_mels=128, n_fft=2048, hop_length=512, sample_rate=22_050)],
                         ids=["default", "16 kHz", "22.05 kHz"])  # fmt: skip
@pytest.mark.filterwarnings("ignore:n_fft=.*is too large", "ignore:divide by zero")  # librosa, on the short and empty inputs below
def test_log_mel_equals_librosa(settings):
    """Our numpy log-Mel and Mel filterbank are librosa's, for speech-like, quiet and silent windows."""
    import librosa

    from avhgr.features import mel_filters

    rng = np.random.default_rng(0)
    n = int(settings.window_seconds * settings.sample_rate)
    t = np.arange(n) / settings.sample_rate
    voice = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * t)) * (1 + np.sin(2 * np.pi * 4 * t))
    windows = np.stack([voice, 0.1 * rng.standard_normal(n), 1e-4 * voice, np.zeros(n)]).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=windows, sr=settings.sample_rate, n_fft=settings.n_fft, hop_length=settings.hop_length,
                                         window="hann", center=True, n_mels=settings.n_mels, power=2.0)  # fmt: skip
    expected = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    ours = log_mel(windows, settings)
    assert ours.shape == expected.shape == (4, settings.n_mels, settings.spec_frames)
    # float32 FFTs round differently: equal to 1e-4 dB within 60 dB of each window's peak, and to
    # 0.05 dB in the bins further down (rounding noise of the peak's power)
    near = expected >= expected.max(axis=(1, 2), keepdims=True) - 60
    np.testing.assert_allclose(ours[near], expected[near], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, expected, atol=0.05, rtol=0)
    for n_windows, samples in [(1, n), (5, n + 37), (2, settings.n_fft // 3), (0, n)]:  # one, odd lengths, short, none
        w = rng.standard_normal((n_windows, samples)).astype(np.float32)
        mel = librosa.feature.melspectrogram(y=w, sr=settings.sample_rate, n_fft=settings.n_fft, hop_length=settings.hop_length,
                                             n_mels=settings.n_mels)  # fmt: skip
        np.testing.assert_allclose(log_mel(w, settings), librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), atol=1e-3, rtol=0)
    librosa_filters = librosa.filters.mel(sr=settings.sample_rate, n_fft=settings.n_fft, n_mels=settings.n_mels)
    ours_filters = mel_filters(settings.sample_rate, settings.n_fft, settings.n_mels)
    assert ours_filters.dtype == np.float32 and (ours_filters > 0).sum() == (librosa_filters > 0).sum()
    np.testing.assert_allclose(ours_filters, librosa_filters, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def corpus_cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    videos, classes = select_emotions(index_dataset("folder", corpus), "happiness,sadness")
    report = run_preprocess(videos, classes, out, SMALL, corpus, "folder", workers=1, progress=False)
    return out, report


def test_corpus_cache_contents(corpus_cache):
    out, report = corpus_cache
    failed = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert set(failed) == {"empty.mp4", "random_bytes.mp4", "truncated.mp4"} or set(failed) == {"empty.mp4", "random_bytes.mp4"}
    assert "empty" in failed["empty.mp4"] and "not a readable media file" in failed["random_bytes.mp4"]
    cache = Cache.open(out)
    by_name = {Path(v["path"]).name: v for v in cache.videos}
    assert by_name["no_audio.mp4"]["has_video"] and not by_name["no_audio.mp4"]["has_audio"]
    assert by_name["audio_only_8k.wav"]["has_audio"] and not by_name["audio_only_8k.wav"]["has_video"]
    assert by_name["short_0.3s.mp4"]["duration"] == pytest.approx(0.3, abs=0.1)
    w = cache.windows
    assert cache.num_windows == 4 * len(cache.videos)
    assert cache.visual.shape[1:] == (48, 48, 3) and cache.visual.dtype == np.uint8
    assert cache.spectrograms.shape[1:] == (94, 94) and cache.spectrograms.dtype == np.float16
    assert (w["face_row"] >= 0).sum() == len(cache.visual) and (w["spec_row"] >= 0).sum() == len(cache.spectrograms)
    assert ((w["face_row"] >= 0) == (w["has_video"] == 1)).all()
    # Labels and the face detector: the astronaut's face is found in the face videos.
    for name, label in [("face av.mp4", "happiness"), ("portrait.mp4", "sadness"), ("face_44k_stereo.mkv", "sadness")]:
        rows = w["video"] == by_name[name]["id"]
        assert (w["label"][rows] == label).all() and (w["label_idx"][rows] == cache.classes.index(label)).all()
        assert w["face_found"][rows].all(), name
    # A 0.3 s clip: windows start at 0, audio padded with silence after the clip.
    rows = np.flatnonzero(w["video"] == by_name["short_0.3s.mp4"]["id"])
    assert (w["start"][rows] == 0).all()
    spec = np.asarray(cache.spectrograms[w["spec_row"][rows[0]]], dtype=np.float32)
    assert spec[:, :40].mean() > spec[:, 70:].mean() + 20  # sound, then the padded silence
    assert report["face_found_rate"] > 0.6


def test_face_crop_is_centred_on_the_face(corpus_cache):
    cache = Cache.open(corpus_cache[0])
    name_to_id = {Path(v["path"]).name: v["id"] for v in cache.videos}
    row = cache.windows["face_row"][np.flatnonzero(cache.windows["video"] == name_to_id["face av.mp4"])[0]]
    face = cache.visual[row].astype(np.float32)
    # The canvas around the photo is a flat 235 gray; a face crop holds little of it.
    assert np.mean(np.all(np.abs(face - 235) < 3, axis=-1)) < 0.2


def test_many_windows_are_cropped_in_chunks_like_in_one_pass(tmp_path):
    """Dense sampling (predict --windows) decodes key frames a chunk at a time; the crops, the
    found flags and the nearest-box fallback for faceless frames are those of one pass."""
    frames = face_frames(30, drift=30)
    ramp = np.broadcast_to(np.linspace(0, 255, frames[0].shape[1], dtype=np.uint8)[None, :, None], frames[0].shape)
    for i in (3, 4, 17):
        frames[i] = ramp.copy()  # no face here; where the crop is cut still shows in the ramp
    path = write_media(tmp_path / "dense.mp4", frames, 10)
    times = np.linspace(0.05, 2.9, 12)
    cropper = make_cropper(FeatureSettings(face_size=48, detect_size=320, min_face=30))
    whole_faces, whole_found = crop_faces(path, times, cropper, chunk=100)
    faces, found = crop_faces(path, times, cropper, chunk=5)
    assert (found == whole_found).all() and 0 < found.sum() < len(found)
    assert np.abs(faces.astype(int) - whole_faces.astype(int)).mean() < 1.0


def test_faceless_windows_take_the_nearest_box_in_time():
    a, b = (0, 0, 10, 10), (5, 5, 20, 20)
    assert nearest_boxes([None, a, None, None, b], [0, 1, 2, 3.6, 4]) == [a, a, a, b, b]
    assert nearest_boxes([None, None], [0, 1]) == [None, None]  # no face at all: centre crops


def test_rerun_with_other_settings_is_refused_then_overwritten(corpus, tmp_path):
    videos, classes = select_emotions(index_dataset("folder", corpus), "happiness,sadness")
    videos = [v for v in videos if v.path.name.startswith("face")]
    run_preprocess(videos, classes, tmp_path, SMALL, corpus, "folder", progress=False)
    before = (tmp_path / "windows.csv").read_bytes()
    other = FeatureSettings(windows=3, face_size=48)
    with pytest.raises(CacheError, match=r"other settings \(features"):
        run_preprocess(videos, classes, tmp_path, other, corpus, "folder", progress=False)
    assert (tmp_path / "windows.csv").read_bytes() == before  # nothing was lost
    run_preprocess(videos, classes, tmp_path, other, corpus, "folder", overwrite=True, progress=False)
    assert Cache.open(tmp_path).num_windows == 3 * 2


def test_kill_9_then_resume_equals_an_uninterrupted_run(corpus, tmp_path):
    data = tmp_path / "data" / "happiness"
    data.mkdir(parents=True)
    for i in range(6):
        shutil.copy(corpus / "happiness" / "face av.mp4", data / f"clip{i}.mp4")
    cmd = [sys.executable, "-m", "avhgr", "preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"),
           "--windows", "6", "--face-size", "48", "--workers", "1", "--emotions", "happiness"]  # fmt: skip
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "parts").is_dir() or not any((killed / "parts").glob("*.npz")):
        assert time.time() < deadline, "no part file appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "COMPLETE").exists(), "the run ended before it could be killed"
    done_before = len(list((killed / "parts").glob("*.npz")))
    assert 1 <= done_before < 6
    with pytest.raises(CacheError, match="not finished"):
        Cache.open(killed)
    resumed = subprocess.run([*cmd, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("faces.npy", "spectrograms.npy", "windows.csv", "videos.csv", "index.csv", "settings.json"):
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_parallel_workers_give_the_same_cache(corpus, tmp_path):
    videos, classes = select_emotions(index_dataset("folder", corpus), "happiness,sadness")
    run_preprocess(videos, classes, tmp_path / "one", SMALL, corpus, "folder", workers=1, progress=False)
    run_preprocess(videos, classes, tmp_path / "two", SMALL, corpus, "folder", workers=2, progress=False)
    for name in ("faces.npy", "spectrograms.npy", "windows.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_cli_errors_are_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "avhgr", "preprocess", "--dataset", "ravdess", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "nope: not a folder" in res.stderr


# ------------------------------------------------------------------ real recordings


def test_real_ravdess_av_clips(shared_data, tmp_path):
    root = shared_data / "ravdess_av"
    videos, classes = select_emotions(index_dataset("ravdess", root), "all")
    assert len(videos) == 11 and classes == ["neutral", "sadness", "fear", "surprise"]
    assert {v.subject for v in videos if v.label == "surprise"} == {"actor03", "actor04", "actor06", "actor09", "actor10"}
    report = run_preprocess(videos[:2], classes, tmp_path, FeatureSettings(windows=6, face_size=64), root, "ravdess", progress=False)
    assert report["videos_ok"] == 2 and report["face_found_rate"] == 1.0
    assert Cache.open(tmp_path).spectrograms.shape == (12, 94, 94)


def test_real_ravdess_speech_index(shared_data):
    videos = index_dataset("ravdess", shared_data / "ravdess_speech")
    assert len(videos) == 720
    basic, classes = select_emotions(videos, "basic6")
    assert len(basic) == 6 * 96 and classes[0] == "anger"
    assert {v.subject for v in videos} == {f"actor{i:02d}" for i in range(1, 13)}
    sample = next(v for v in videos if v.path.name == "03-01-07-02-01-02-11.flac")
    assert sample.label == "disgust" and sample.subject == "actor11"


# ------------------------------------------------------------------ failed files tried again, shares of one cache

CACHE_BYTES = ("faces.npy", "spectrograms.npy", "windows.csv", "videos.csv", "index.csv", "settings.json")


def same_cache(a: Path, b: Path) -> None:
    for name in CACHE_BYTES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((a / "report.json").read_text())["failed"] == json.loads((b / "report.json").read_text())["failed"]


def test_a_failed_file_fixed_since_is_processed_by_retry_failed(corpus, tmp_path):
    data = tmp_path / "data" / "happiness"
    data.mkdir(parents=True)
    good = (corpus / "happiness" / "face av.mp4").read_bytes()
    for i in range(3):
        (data / f"clip{i}.mp4").write_bytes(good)
    (data / "clip1.mp4").write_bytes(b"not a video at all")
    videos, classes = select_emotions(index_dataset("folder", tmp_path / "data"), "happiness")
    first = run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False)
    assert first["videos_failed"] == 1 and "not a readable media file" in first["failed"][0]["reason"]
    (data / "clip1.mp4").write_bytes(good)  # the file is fixed
    again = run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False)
    assert again["videos_failed"] == 1  # a file's own failure is not tried again unasked
    fixed = run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False, retry_failed=True)
    assert fixed["videos_failed"] == 0 and fixed["videos_ok"] == 3
    run_preprocess(videos, classes, tmp_path / "fresh", SMALL, tmp_path / "data", "folder", progress=False)
    same_cache(tmp_path / "c", tmp_path / "fresh")  # as if it had never failed


def test_a_file_that_failed_by_a_bug_is_tried_again_by_default_once_the_code_changed(corpus, tmp_path, monkeypatch):
    import avhgr.preprocess as preprocess

    videos, classes = select_emotions(index_dataset("folder", corpus), "happiness,sadness")
    videos = [v for v in videos if v.path.name.startswith("face")]
    real = preprocess.process_file

    def buggy(path, *args, **kwargs):
        if Path(path).name == "face av.mp4":
            raise IndexError("a bug of ours")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(preprocess, "process_file", buggy)
    first = run_preprocess(videos, classes, tmp_path / "c", SMALL, corpus, "folder", progress=False)
    assert first["videos_failed"] == 1 and first["failed"][0]["reason"].startswith("internal error")
    monkeypatch.setattr(preprocess, "process_file", real)
    marked = (tmp_path / "c" / "COMPLETE").stat().st_mtime_ns
    same_code = run_preprocess(videos, classes, tmp_path / "c", SMALL, corpus, "folder", progress=False)
    assert same_code["videos_failed"] == 1  # the code that failed has not changed: the cache is not reopened for it
    assert (tmp_path / "c" / "COMPLETE").stat().st_mtime_ns == marked
    import avhgr.cache

    monkeypatch.setattr(avhgr.cache, "code_identity", lambda: "0.1.0+fixed")  # avhgr changed: the bug may be fixed
    again = run_preprocess(videos, classes, tmp_path / "c", SMALL, corpus, "folder", progress=False)
    assert again["videos_failed"] == 0 and again["videos_ok"] == 2
    run_preprocess(videos, classes, tmp_path / "fresh", SMALL, corpus, "folder", progress=False)
    same_cache(tmp_path / "c", tmp_path / "fresh")


@pytest.fixture()
def six_clips(corpus, tmp_path):
    data = tmp_path / "data" / "happiness"
    data.mkdir(parents=True)
    for i in range(6):
        shutil.copy(corpus / "happiness" / "face av.mp4", data / f"clip{i}.mp4")
    (data / "clip3.mp4").write_bytes(b"broken")  # a failure is part of the cache too
    cmd = [sys.executable, "-m", "avhgr", "preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"),
           "--windows", "6", "--face-size", "48", "--workers", "1", "--emotions", "happiness"]  # fmt: skip
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    return cmd


def test_two_shards_make_the_cache_of_one_process(six_clips, tmp_path):
    out = tmp_path / "sharded"
    first = subprocess.run([*six_clips, "--out", str(out), "--shard", "0/2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "share 0/2 done" in first.stdout and "3 of 6 files are still to do" in first.stdout, first.stdout
    assert not (out / "COMPLETE").exists() and len(list((out / "parts").iterdir())) == 3  # videos 0, 2, 4
    second = subprocess.run([*six_clips, "--out", str(out), "--shard", "1/2"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "5 videos" in second.stdout, second.stdout  # the last share consolidated
    same_cache(out, tmp_path / "whole")
    assert not (out / "parts").exists() and not (out / "consolidating.lock").exists()


def test_three_shards_one_killed_and_rerun_make_the_cache_of_one_process(six_clips, tmp_path):
    out = tmp_path / "sharded"
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}  # share 0/3
    assert subprocess.run([*six_clips, "--out", str(out), "--shard", "auto"], env=env, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["000000.npz", "000003.fail.json"]
    killed = subprocess.Popen([*six_clips, "--out", str(out), "--shard", "1/3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "parts" / "000001.npz").exists():
        assert time.time() < deadline and killed.poll() is None, "shard 1/3 wrote nothing"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    third = subprocess.run([*six_clips, "--out", str(out), "--shard", "2/3"], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "still to do" in third.stdout and not (out / "COMPLETE").exists(), third.stdout
    with pytest.raises(CacheError, match="not finished"):
        Cache.open(out)
    rerun = subprocess.run([*six_clips, "--out", str(out), "--shard", "1/3"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "5 videos" in rerun.stdout, rerun.stdout
    same_cache(out, tmp_path / "whole")


def test_shard_settings_are_checked(tmp_path):
    from avhgr.preprocess import parse_shard

    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    assert parse_shard("auto", {"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert parse_shard("auto", slurm) == (2, 5)  # --array=2-10:2: the third of five tasks
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(CacheError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(CacheError, match="no SLURM job array"):
        parse_shard("auto", {})


def test_a_reopened_cache_killed_while_consolidating_resumes_to_the_fresh_cache(corpus, tmp_path, monkeypatch):
    """Reopened to retry a file, then killed after the new arrays replaced the old ones but before
    the new tables: the rerun must not pair the old tables with the new arrays."""
    import avhgr.cache

    data = tmp_path / "data" / "happiness"
    data.mkdir(parents=True)
    good = (corpus / "happiness" / "face av.mp4").read_bytes()
    for i in range(4):
        (data / f"clip{i}.mp4").write_bytes(good if i != 1 else b"broken")
    videos, classes = select_emotions(index_dataset("folder", tmp_path / "data"), "happiness")
    run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False)
    (data / "clip1.mp4").write_bytes(good)
    real = avhgr.cache.write_csv

    def killed(path, *args):
        if path.name == "windows.csv":
            raise KeyboardInterrupt("killed")
        real(path, *args)

    monkeypatch.setattr(avhgr.cache, "write_csv", killed)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False, retry_failed=True)
    monkeypatch.setattr(avhgr.cache, "write_csv", real)
    run_preprocess(videos, classes, tmp_path / "c", SMALL, tmp_path / "data", "folder", progress=False, retry_failed=True)
    run_preprocess(videos, classes, tmp_path / "fresh", SMALL, tmp_path / "data", "folder", progress=False)
    same_cache(tmp_path / "c", tmp_path / "fresh")
    assert not list((tmp_path / "c").glob("previous.*"))
