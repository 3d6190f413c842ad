"""The Python API (avhgr.load_model / Model.predict*): what `avhgr predict --json` gives, for a
file, a list of files (one unreadable) and media a program decoded itself."""

import json
import shutil

import numpy as np
import pytest

import avhgr
from avhgr.builtin import SPEECH
from avhgr.errors import RunError, UserError
from avhgr.predict import Predictor
from avhgr.synth import write_media

from test_predict import voice


@pytest.fixture(scope="module")
def speech_model():
    return avhgr.load_model("builtin:speech", device="cpu")


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("api") / "voice.wav", audio=voice(3.0), sample_rate=48_000)


def test_predict_is_what_predict_json_prints(speech_model, wav):
    result = speech_model.predict(wav, hop=0.5)
    direct = Predictor("builtin:speech", "cpu").predict_file(wav, timeline=True, hop=0.5)
    assert json.loads(json.dumps(result.to_dict())) == json.loads(json.dumps(direct))
    assert result.emotion in result.probabilities and result.speech_rate > 0.5 and result.face_rate is None
    assert [w["start"] for w in result.timeline] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # 3 s, a window every 0.5 s


def test_predict_many_keeps_going_past_a_file_it_cannot_read(speech_model, wav, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    good, bad = speech_model.predict_many([wav, fake], hop=0.5)
    assert good.error is None and good.emotion is not None
    assert bad.emotion is None and "notes.mp4" in bad.error
    with pytest.raises(UserError, match="notes.mp4"):
        speech_model.predict(fake)


def test_arrays_decoded_by_the_caller_give_what_the_file_gives(speech_model, wav):
    import soundfile

    samples, rate = soundfile.read(wav, dtype="float32")
    from_file = speech_model.predict(wav, hop=0.5)
    from_arrays = speech_model.predict_arrays(samples, rate, hop=0.5)
    assert from_arrays.emotion == from_file.emotion
    assert from_arrays.probabilities == pytest.approx(from_file.probabilities, abs=1e-3)
    assert from_arrays.windows == from_file.windows


def test_a_folder_of_seed_runs_is_refused_naming_them(tmp_path):
    for name in ("seed0", "seed1"):
        shutil.copytree(SPEECH, tmp_path / "runs" / name)
    with pytest.raises(RunError, match="not one model.*seed0"):
        avhgr.load_model(tmp_path / "runs", device="cpu")
    assert avhgr.load_model(tmp_path / "runs" / "seed1", device="cpu").classes == avhgr.load_model("builtin:speech", device="cpu").classes


def test_frames_and_samples_decoded_by_the_caller_give_what_the_file_gives_and_silence_gives_a_reason(tmp_path):
    """The built-in model (face and voice) on arrays: the same emotion and evidence as on the file
    they came from; digital silence without frames gets no emotion and says why."""
    from avhgr.decode import SAMPLE_RATE, read_audio, read_frames_at
    from avhgr.synth import face_photo, place

    clip = write_media(tmp_path / "clip.mp4", frames=[place((240, 320), face_photo(), (160, 120), 0.45) for _ in range(50)],
                       fps=25, audio=voice(2.0), sample_rate=48_000)  # fmt: skip
    model = avhgr.load_model(device="cpu")
    from_file = model.predict(clip, hop=0.5)
    times = np.arange(50) / 25
    from_arrays = model.predict_arrays(read_audio(clip, SAMPLE_RATE), SAMPLE_RATE, read_frames_at(clip, times), times, hop=0.5)
    assert from_file.emotion is not None and from_arrays.emotion == from_file.emotion
    assert (from_arrays.face_rate, from_arrays.speech_rate) == (from_file.face_rate, from_file.speech_rate) and from_file.face_rate > 0.5
    assert from_arrays.probabilities == pytest.approx(from_file.probabilities, abs=0.05)
    silent = model.predict_arrays(np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    assert silent.emotion is None and silent.probabilities in ({}, None) and "speech" in silent.reason
