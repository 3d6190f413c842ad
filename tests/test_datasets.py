"""Dataset indexers on folder layouts as the datasets are distributed (empty stand-in files)."""

import pytest

from avhgr.datasets import DatasetError, canonical_label, index_dataset, select_emotions


def touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_ravdess_modalities_and_channels(tmp_path):
    touch(tmp_path, "Actor_01/01-01-05-01-01-01-01.mp4", "Actor_01/02-01-05-01-01-01-01.mp4",
          "Actor_02/01-02-03-01-01-01-02.mp4", "Actor_02/03-01-08-02-02-01-02.wav", "notes.txt")  # fmt: skip
    videos = index_dataset("ravdess", tmp_path)
    assert [(v.path.name, v.label, v.subject) for v in videos] == [("01-01-05-01-01-01-01.mp4", "anger", "actor01")]
    audio_only = tmp_path / "audio"
    touch(audio_only, "Actor_02/03-01-08-02-02-01-02.wav")
    assert index_dataset("ravdess", audio_only)[0].label == "surprise"


def test_enterface_layout(tmp_path):
    touch(tmp_path, "subject 1/anger/sentence 1/s1_an_1.avi", "subject 1/happiness/sentence 2/s1_ha_2.avi",
          "subject 6/disgust/s6_di_1.avi", "subject 12/fear/sentence 3/s12_fe_3.avi")  # fmt: skip
    got = {(v.path.name, v.label, v.subject) for v in index_dataset("enterface", tmp_path)}
    assert got == {("s1_an_1.avi", "anger", "subject1"), ("s1_ha_2.avi", "happiness", "subject1"),
                   ("s6_di_1.avi", "disgust", "subject6"), ("s12_fe_3.avi", "fear", "subject12")}  # fmt: skip


def test_cremad_names(tmp_path):
    touch(tmp_path, "1001_DFA_ANG_XX.flv", "1002_IEO_NEU_LO.flv", "1003_ITS_XYZ_HI.flv")
    videos = index_dataset("cremad", tmp_path)
    assert [(v.label, v.subject) for v in videos] == [("anger", "1001"), ("neutral", "1002")]
    basic, _ = select_emotions(videos)
    assert len(basic) == 1


def test_csv_manifest_and_folder(tmp_path):
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4", "happy/c.mp4", "Sad/d.mkv")
    (tmp_path / "m.csv").write_text("path,label,subject\nclips/a.mp4,Angry,p1\nclips/b.mp4,fearful\n")
    got = [(v.path.name, v.label, v.subject) for v in index_dataset("csv", tmp_path / "m.csv")]
    assert got == [("a.mp4", "anger", "p1"), ("b.mp4", "fear", "b")]
    folder = [(v.path.name, v.label) for v in index_dataset("folder", tmp_path)]
    assert ("c.mp4", "happiness") in folder and ("d.mkv", "sadness") in folder


def test_baum1s_annotations(tmp_path):
    touch(tmp_path, "S001/S001_001.mp4", "S001/S001_002.mp4", "S002/S002_001.mp4")
    (tmp_path / "annotations.csv").write_text("Clip,Emotion\nS001_001,Happiness\nS001_002,Boredom\nS002_001.mp4,Sadness\n")
    videos = index_dataset("baum1s", tmp_path)
    assert [(v.label, v.subject) for v in videos] == [("happiness", "S001"), ("boredom", "S001"), ("sadness", "S002")]
    basic, classes = select_emotions(videos, "basic6")
    assert len(basic) == 2
    kept, classes = select_emotions(videos, "all")
    assert len(kept) == 3 and classes[-1] == "boredom"
    with pytest.raises(DatasetError, match="annotation CSV"):
        index_dataset("baum1s", tmp_path / "S002")


def test_errors_and_labels(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        index_dataset("ravdess", tmp_path / "missing")
    with pytest.raises(DatasetError, match="no cremad videos"):
        index_dataset("cremad", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        index_dataset("imagenet", tmp_path)
    assert canonical_label(" Surprised ") == "surprise" and canonical_label("HAP") == "happiness"
