"""Prediction a person can trust: evidence not guesses, a regular timeline and its picture, live streams."""

import json
import subprocess
import sys

import numpy as np
import pytest

from avhgr.predict import Predictor
from avhgr.synth import write_media
from avhgr.train import TrainConfig, train

from conftest import face_frames

CLI = [sys.executable, "-m", "avhgr"]


@pytest.fixture(scope="module")
def model(tiny, scratch):
    out = scratch / "run"
    train(TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=2, joint_epochs=1, backbone="resnet18", batch_size=16, device="cpu"),
          log=lambda *a: None)  # fmt: skip
    return out


def voice(seconds: float, sr: int = 48_000) -> np.ndarray:
    """A voice-like sound: harmonics of a wavering pitch, in syllables (the speech test passes)."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(160 * (1 + 0.05 * np.sin(2 * np.pi * 1.5 * t))) / sr
    syllables = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 1.5
    return (0.3 * syllables * sum(np.sin(k * phase) / k for k in range(1, 7))).astype(np.float32)


def noise_frames(n: int, size=(120, 160), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "silence.wav": write_media(d / "silence.wav", audio=np.zeros(8 * 48_000, np.float32)),
        "noise_silent.mp4": write_media(d / "noise_silent.mp4", noise_frames(30), 10, np.zeros(3 * 48_000, np.float32)),
        "faceless_voice.mp4": write_media(d / "faceless_voice.mp4", noise_frames(30, seed=1), 10, voice(3.0)),
        "face_silent.mp4": write_media(d / "face_silent.mp4", face_frames(30), 10, np.zeros(3 * 48_000, np.float32)),
        "face_voice.mp4": write_media(d / "face_voice.mp4", face_frames(40), 10, voice(4.0)),
    }


def test_no_face_and_no_speech_gives_no_emotion(model, media):
    predictor = Predictor(model, device="cpu")
    for name in ("silence.wav", "noise_silent.mp4"):
        res = predictor.predict_file(media[name])
        assert res["emotion"] is None and res["probabilities"] is None and res["windows_used"] == 0, (name, res)
        assert "no speech was heard" in res["reason"]
    assert "no face was found" in predictor.predict_file(media["noise_silent.mp4"])["reason"]
    faceless = predictor.predict_file(media["faceless_voice.mp4"])
    assert faceless["face_rate"] == 0.0 and faceless["speech_rate"] > 0.5 and faceless["emotion"] is not None  # from the voice alone
    silent = predictor.predict_file(media["face_silent.mp4"])
    assert silent["speech_rate"] == 0.0 and silent["face_rate"] > 0.5 and silent["emotion"] is not None  # from the face alone
    both = predictor.predict_file(media["face_voice.mp4"])
    assert both["face_rate"] > 0.5 and both["speech_rate"] > 0.5 and both["windows_used"] == both["windows"]


def test_evidence_changes_the_networks_inputs(model, media):
    """A window without a face has exactly the input of a video with no track at all: the face
    network's feature is zero, not computed from a centre crop of the background."""
    predictor = Predictor(model, device="cpu")
    w, _ = predictor.windows_of_file(media["faceless_voice.mp4"])
    probs, used = predictor.probabilities(w)
    audio_only = type(w)(starts=w.starts, visual=None, specs=w.specs, face=np.zeros(len(w.starts), bool), speech=w.speech)
    probs_no_video, _ = predictor.probabilities(audio_only)
    np.testing.assert_allclose(probs[used], probs_no_video[used], atol=1e-6)
    w.face[:] = True  # pretend the crops were faces: the answer changes
    assert not np.allclose(predictor.probabilities(w)[0][used], probs[used], atol=1e-4)


def test_cli_reports_no_emotion_in_words_and_exit_status(model, media):
    res = subprocess.run([*CLI, "predict", str(media["silence.wav"]), "--model", str(model), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "no emotion: " in res.stdout and "no speech was heard" in res.stdout
    res = subprocess.run([*CLI, "predict", str(media["silence.wav"]), str(media["face_voice.mp4"]), "--model", str(model), "--json",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 3 and [r["emotion"] is None for r in lines] == [True, False]
    assert {"face_rate", "speech_rate", "reason", "model"} <= set(lines[0])


def test_cli_predict_reports_a_bug_in_one_line_and_goes_on(model, media, monkeypatch, tmp_path, capsys):
    """An unexpected exception on one file: one line naming it, the traceback in a log, the next file predicted, exit 1."""
    from typer.testing import CliRunner

    from avhgr import predict as predict_module
    from avhgr.cli import app

    real = predict_module.Predictor.predict_file

    def buggy(self, path, *args, **kwargs):
        if "silence" in str(path):
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(predict_module.Predictor, "predict_file", buggy)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where gettempdir() points
    res = CliRunner().invoke(app, ["predict", str(media["silence.wav"]), str(media["face_voice.mp4"]), "--model", str(model),
                                   "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output and "torch.cat" not in res.output
    assert f"error: {media['silence.wav']}: internal error, a bug in avhgr" in res.output
    assert str(media["face_voice.mp4"]) + ": " in res.output  # the next file still got its answer
    assert "torch.cat" in (tmp_path / "avhgr-predict-errors.log").read_text()


def test_hop_timeline_covers_the_file_and_plots(model, media, tmp_path):
    predictor = Predictor(model, device="cpu")
    res, faces = predictor.predict_file(media["face_voice.mp4"], timeline=True, hop=0.25, keep_faces=True)
    starts = [w["start"] for w in res["timeline"]]
    assert starts == pytest.approx(np.arange(0, 3.5 + 1e-9, 0.25).tolist())  # 4 s clip, 0.5 s windows
    assert res["windows"] == len(starts) == len(faces)
    assert all(w["emotion"] is not None and w["face"] and w["speech"] for w in res["timeline"])
    png = tmp_path / "timeline.png"
    out = subprocess.run([*CLI, "predict", str(media["face_silent.mp4"]), "--model", str(model), "--hop", "0.5", "--plot", str(png),
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 10_000


def test_watch_on_a_stream_from_stdin_matches_predict_hop(model, tmp_path):
    """An MPEG-TS stream piped through standard input gives, window for window, what predict
    --hop gives on the same file. (With spectrograms levelled per window: a live stream's
    recording level can only be the level heard so far, predict's is the whole file's.)"""
    import shutil

    levelled = tmp_path / "run"
    shutil.copytree(model, levelled)
    card = json.loads((levelled / "model.json").read_text())
    (levelled / "model.json").write_text(json.dumps({**card, "level": "window"}))
    model = levelled
    ts = write_media(tmp_path / "stream.ts", face_frames(40, drift=15), 10, voice(4.0))
    with ts.open("rb") as fh:
        live = subprocess.run([*CLI, "watch", "-", "--model", str(model), "--json", "--hop", "0.5", "--device", "cpu"],
                              stdin=fh, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert live.returncode == 0, live.stderr
    windows = [json.loads(line) for line in live.stdout.splitlines()]
    offline = Predictor(model, device="cpu").predict_file(ts, timeline=True, hop=0.5)["timeline"]
    assert len(windows) >= 6 and abs(len(windows) - len(offline)) <= 1  # the stream's end may count one window more or less
    for a, b in zip(windows, offline):
        assert a["start"] == b["start"] and (a["face"], a["speech"]) == (b["face"], b["speech"])
        assert a["emotion"] == b["emotion"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)


def test_watch_goes_on_when_a_track_stalls_and_refuses_what_it_cannot_open(model, tmp_path):
    """The audio track ends after 1 s while the video goes on for 5 s: the windows after it are
    cut without waiting for audio that never comes, as windows without speech."""
    from avhgr.predict import Predictor
    from avhgr.watch import StreamWindows, watch

    clip = write_media(tmp_path / "short_audio.ts", face_frames(50), 10, voice(1.0))
    windows = []
    predictor = Predictor(model, device="cpu")
    assert watch(predictor, str(clip), hop=0.5, emit=windows.append) == len(windows) >= 8
    assert [w["speech"] for w in windows[:2]] == [True, True] and not any(w["speech"] for w in windows[3:])
    assert all(w["face"] for w in windows) and all(w["emotion"] for w in windows)
    cutter = StreamWindows(0.5, 0.5, 48_000, audio=True, video=True)
    cutter.add_frame(0.3, object())
    assert not cutter.ready()  # no audio yet, video not far ahead: wait
    cutter.add_frame(3.0, object())
    assert cutter.ready()  # video 2.5 s past the window's end: the stalled audio is left out
    res = subprocess.run([*CLI, "watch", str(tmp_path / "nothing_here.ts"), "--model", str(model), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "cannot open the stream" in res.stderr and "Traceback" not in res.stderr
