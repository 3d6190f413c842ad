"""Facial features as the visual input (`--visual-features`): a per-recording CSV or OpenFace's
per-frame CSVs, matched to the files, averaged per window, with the evidence rule faces follow."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avhgr.cache import Cache
from avhgr.datasets import index_dataset, select_emotions
from avhgr.demo import EASY, CorpusSpec, build_corpus
from avhgr.features import FeatureSettings
from avhgr.predict import Predictor
from avhgr.preprocess import run_preprocess
from avhgr.synth import tone, write_media
from avhgr.train import TrainConfig, train
from avhgr.visual_features import FeatureTableError, open_table

SETTINGS = FeatureSettings(windows=4)
COLUMNS = ["AU01_r", "AU04_r", "AU12_r"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Audio-only recordings of two classes in two actors' folders (as RAVDESS speech is laid out),
    and a per-recording table of facial features for all but one of them, in which the class shows."""
    root = tmp_path_factory.mktemp("speech")
    rows = []
    for i in range(12):
        label = ("happiness", "sadness")[i % 2]
        path = root / f"Actor_0{i % 3 + 1}" / label / f"take{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_media(path, audio=tone(1.2, 16_000, 180 + 40 * (i % 2)), sample_rate=16_000)
        if i != 11:  # take11 has no row: no visual input
            au = [1.5 + (i % 2), 0.2 * i, 3.0 - 2 * (i % 2)]
            rows.append([path.relative_to(root).as_posix(), f"video{i}.mp4", *au])
    table = root / "au.csv"
    with table.open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "video", *COLUMNS], *rows])
    return root, table


def test_a_per_recording_table_gives_every_window_the_row_and_makes_audio_files_audio_visual(speech, tmp_path):
    root, table = speech
    features = open_table(table)
    assert features.columns == COLUMNS  # the text column "video" is left out
    manifest = root / "manifest.csv"
    manifest.write_text("path,label,subject\n" + "".join(f"{p.relative_to(root).as_posix()},{p.parent.name},{p.parts[-3]}\n"
                                                          for p in sorted(root.glob("Actor_*/*/*.wav"))))  # fmt: skip
    videos, classes = select_emotions(index_dataset("csv", manifest), "happiness,sadness")
    report = run_preprocess(videos, classes, tmp_path / "c", SETTINGS, manifest, "csv", progress=False, features=features)
    assert report["videos_ok"] == 12
    cache = Cache.open(tmp_path / "c")
    assert cache.visual.shape == (11 * 4, 3) and cache.visual.dtype == np.float32
    assert cache.settings["visual_features"]["columns"] == COLUMNS
    w = cache.windows
    for v in cache.videos:
        rows = np.flatnonzero(w["video"] == v["id"])
        if v["path"].endswith("take11.wav"):
            assert not v["has_video"] and (w["face_row"][rows] == -1).all()  # not in the table: no visual input
            continue
        assert v["has_video"] and v["has_audio"]  # an audio file with a face from the table
        i = int(Path(v["path"]).stem[4:])
        expected = np.array([1.5 + (i % 2), 0.2 * i, 3.0 - 2 * (i % 2)], np.float32)
        assert (w["face_found"][rows] == 1).all()
        np.testing.assert_allclose(cache.visual[w["face_row"][rows]], np.repeat(expected[None], 4, 0), rtol=1e-6)


def test_rows_match_by_the_end_of_the_path_in_predict(speech):
    root, table = speech
    features = open_table(table, match="end")
    wanted = features.row(Path("/elsewhere/data") / "Actor_02" / "sadness" / "take1.wav")
    np.testing.assert_allclose(wanted, [2.5, 0.2, 1.0], rtol=1e-6)
    assert features.row(Path("/x/Actor_03/sadness/take1.wav")) is None  # another actor's folder: not that row
    assert features.row(Path("take11.wav")) is None
    exact = open_table(table)  # preprocess: the path under --root, exactly
    assert exact.row(root / "Actor_02/sadness/take1.wav", "Actor_02/sadness/take1.wav") is not None
    assert exact.row(root / "x" / "Actor_02/sadness/take1.wav", "x/Actor_02/sadness/take1.wav") is None


def write_openface(path: Path, times, success, values):
    header = ["frame", " face_id", " timestamp", " confidence", " success", *[f" {c}" for c in COLUMNS]]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, (t, s, v) in enumerate(zip(times, success, values)):
            w.writerow([i + 1, 0, f"{t:.3f}", 0.98 if s else 0.1, int(s), *[f"{x:.3f}" for x in v]])


def test_openface_frames_are_averaged_per_window_where_openface_succeeded(tmp_path):
    folder = tmp_path / "openface"
    folder.mkdir()
    times = np.arange(0, 2.0, 0.1)  # 10 frames per second
    success = times < 1.0  # the face is lost after 1 s
    values = np.stack([times, 2 * times, np.ones_like(times)], axis=1)
    write_openface(folder / "clip.csv", times, success, values)
    table = open_table(folder)
    assert table.kind == "openface" and table.columns == COLUMNS
    feats, found = table.windows(tmp_path / "videos" / "clip.mp4", None, np.array([0.0, 0.5, 1.2]), 0.5)
    assert found.tolist() == [True, True, False]  # the last window has no frame where OpenFace succeeded
    np.testing.assert_allclose(feats[0], [0.2, 0.4, 1.0], atol=1e-5)  # the mean of frames 0.0 .. 0.4
    np.testing.assert_allclose(feats[1], [0.7, 1.4, 1.0], atol=1e-5)  # 0.5 .. 0.9
    assert table.windows(tmp_path / "other.mp4", None, np.array([0.0]), 0.5) is None


def test_broken_tables_are_refused_in_words(tmp_path):
    (tmp_path / "no_file.csv").write_text("name,AU01_r\na.wav,1\n")
    with pytest.raises(FeatureTableError, match="needs a column 'file'"):
        open_table(tmp_path / "no_file.csv")
    (tmp_path / "twice.csv").write_text("file,AU01_r\na.wav,1\na.wav,2\n")
    with pytest.raises(FeatureTableError, match="appears twice"):
        open_table(tmp_path / "twice.csv")
    with pytest.raises(FeatureTableError, match="no such feature table"):
        open_table(tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureTableError, match="no OpenFace CSV"):
        open_table(tmp_path / "empty")


@pytest.fixture(scope="module")
def feature_run(scratch):
    """A tiny audio-visual corpus (every face and voice shows its class) whose visual input is a
    per-recording table in which the class shows, trained end to end."""
    root = scratch / "featrun"
    root.mkdir()
    manifest = build_corpus(root / "corpus", CorpusSpec(per_class=5, duration=1.2, **EASY))
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    rng = np.random.default_rng(0)
    with (root / "table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", *COLUMNS])
        for v in videos:
            c = classes.index(v.label)
            w.writerow([v.path.name, *(np.eye(6)[c][:3] * 2 + rng.normal(0, 0.1, 3) + [c / 5, 0, 0])])
    features = open_table(root / "table.csv")
    run_preprocess(videos, classes, root / "cache", FeatureSettings(windows=4), manifest, "csv", progress=False, features=features)
    out = root / "run"
    report = train(TrainConfig(cache=str(root / "cache"), out=str(out), epochs=4, joint_epochs=3, backbone="resnet18", batch_size=16,
                               device="cpu"), log=lambda *a: None)  # fmt: skip
    return root, out, report


def test_a_short_training_run_on_features_learns_and_says_what_it_looks_at(feature_run):
    root, out, report = feature_run
    card = json.loads((out / "model.json").read_text())
    assert card["visual_input"]["kind"] == "features" and card["visual_input"]["columns"] == COLUMNS
    assert len(card["visual_input"]["stats"][0]) == 3
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    best_visual = max(float(r["val_video_acc"]) for r in rows if r["stage"] == "stage1_visual")
    assert best_visual >= 0.5  # three feature columns carry the class (chance 1 in 6)
    assert report["videos"] == 6


def test_predict_with_and_without_the_feature_table(feature_run):
    root, out, _ = feature_run
    clip = root / "corpus" / "anger_00.mp4"
    with_table = Predictor(out, device="cpu", visual_features=root / "table.csv").predict_file(clip)
    assert with_table["face_rate"] == 1.0 and with_table["missing"] == [] and "note" not in with_table
    without = Predictor(out, device="cpu")
    assert "no --visual-features" in without.note
    res = without.predict_file(clip)
    assert res["missing"] == ["visual"] and res["emotion"] is not None and "visual input is missing" in res["note"]  # from the voice
    cli = subprocess.run([sys.executable, "-m", "avhgr", "predict", str(clip), "--model", str(out), "--json"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert cli.returncode == 0 and "note: the model looks at facial features" in cli.stderr


def test_a_product_run_takes_stage_1_as_it_is_and_trains_nothing_on_top(feature_run):
    """--fusion product: the two stage-1 networks, their answers multiplied per window; no fusion
    network and no stage 2, its weights are stage 1's, and prediction loads it like any model."""
    from safetensors.torch import load_file

    from avhgr.errors import RunError

    root, out, _ = feature_run
    cfg = TrainConfig(cache=str(root / "cache"), out=str(root / "product"), epochs=4, backbone="resnet18", batch_size=16, device="cpu",
                      fusion="product", init_from=str(out))  # fmt: skip
    report = train(cfg, log=lambda *a: None)
    card = json.loads((root / "product" / "model.json").read_text())
    assert card["fusion"] == "product" and card["audio_weight"] == 0.5 and card["fusion_layers"] is None
    assert set(report["stages"]) == set() and report["last_epoch"] is None and report["videos"] == 6
    weights = load_file(str(root / "product" / "model.safetensors"))
    for modality in ("audio", "visual"):
        stage1 = load_file(str(out / f"stage1_{modality}.safetensors"))
        assert all(torch.equal(weights[f"{modality}.{k}"], v) for k, v in stage1.items())
    assert train(cfg, resume=True, log=lambda *a: None)["predictions"] == report["predictions"]  # read back, not refused as changed
    res = Predictor(root / "product", device="cpu", visual_features=root / "table.csv").predict_file(root / "corpus" / "anger_00.mp4")
    assert res["emotion"] is not None and res["face_rate"] == 1.0
    with pytest.raises(RunError, match=r"--corr would do nothing here \(--fusion product trains no stage 2\)"):
        TrainConfig(cache=str(root / "cache"), out=str(root / "x"), fusion="product", corr="fgh")
    with pytest.raises(RunError, match=r"--audio-weight would do nothing here"):
        TrainConfig(cache=str(root / "cache"), out=str(root / "x"), audio_weight=0.7)
    with pytest.raises(RunError, match=r"--fusion would do nothing here \(an audio-only run has one network: nothing to combine\)"):
        TrainConfig(cache=str(root / "cache"), out=str(root / "x"), fusion="product", modalities=("audio",))
    with pytest.raises(RunError, match=r"--audio-weight must be in \[0, 1\]"):
        TrainConfig(cache=str(root / "cache"), out=str(root / "x"), fusion="product", audio_weight=1.5)


def test_a_product_run_keeps_its_weight_and_one_answer_of_each_network_serves_every_weight_and_sweep(feature_run):
    """A product trained with its own stage 1 and --audio-weight 0.8 answers as its card rebuilds it;
    ProductAnswers (each network run once) gives the same probabilities as the model itself, at any
    weight and with a modality taken from some recordings, and the missing-modality sweep built on
    it gives the same answers as the sweep that runs the model."""
    from avhgr.data import WindowReader
    from avhgr.evaluate import ProductAnswers, evaluate_run, missing_sweep, window_probabilities
    from avhgr.models import ProductModel
    from avhgr.runs import RunFolder, load_model

    root, _, _ = feature_run
    out = root / "product_own"
    report = train(TrainConfig(cache=str(root / "cache"), out=str(out), epochs=1, backbone="resnet18", batch_size=16, device="cpu",
                               fusion="product", audio_weight=0.8), log=lambda *a: None)  # fmt: skip
    assert set(report["stages"]) == {"stage1_audio", "stage1_visual"}
    model, card = load_model(out, torch.device("cpu"))
    assert isinstance(model, ProductModel) and model.audio_weight == 0.8 == card["audio_weight"]
    assert evaluate_run(out, device="cpu")["predictions"] == report["predictions"]  # the card rebuilds the model that was tested
    data = Cache.open(root / "cache")
    reader = WindowReader(data, tuple(card["audio_stats"]), ("audio", "visual"), card["level"], card["evidence"], card["visual_input"]["stats"])
    ids = {v["path"]: v["id"] for v in data.videos}
    test = [ids[e["path"]] for e in RunFolder(out).split()["test"]]
    answers = ProductAnswers(model, reader, reader.windows(test), torch.device("cpu"))
    for w in (0.8, 0.2):
        for r in (reader, reader.dropping({test[0]: "audio", test[1]: "visual"})):
            windows = r.windows(test)
            direct = window_probabilities(ProductModel(model.audio, model.visual, w), r, windows, torch.device("cpu"))
            assert np.abs(answers.probabilities(r, windows, w) - direct).max() < 1e-5
    swept = missing_sweep(model, reader, data, test, "cpu", rates=(0.5,), seed=1)
    fast = missing_sweep(model, reader, data, test, "cpu", rates=(0.5,), seed=1, probabilities=lambda r, w: answers.probabilities(r, w, 0.8))
    assert {k: m["predictions"] for k, m in swept.items()} == {k: m["predictions"] for k, m in fast.items()}
    with pytest.raises(ValueError, match="did not answer"):
        answers.probabilities(reader, reader.windows([v for v in ids.values() if v not in test][:1]), 0.5)


def test_real_action_units_match_every_ravdess_speech_file(shared_data, tmp_path):
    table = open_table(shared_data / "ravdess_au" / "ravdess_au_actors_01-12.csv")
    assert len(table.columns) == 35 and table.columns[0] == "AU01_r" and "video" not in table.columns
    videos, classes = select_emotions(index_dataset("ravdess", shared_data / "ravdess_speech"), "basic6")
    root = shared_data / "ravdess_speech"
    missing = [v for v in videos if table.row(v.path, v.path.relative_to(root).as_posix()) is None]
    assert not missing and len(videos) == 576
    run_preprocess(videos[:3], classes, tmp_path / "c", FeatureSettings(windows=2), root, "ravdess", progress=False, features=table)
    cache = Cache.open(tmp_path / "c")
    assert cache.visual.shape == (6, 35) and all(v["has_video"] and v["has_audio"] for v in cache.videos)
