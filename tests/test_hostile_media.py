"""Hostile media (RELIABILITY.md): each file gives windows without a face or a one-line reason
in words, never an internal exception text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import face_frames
from PIL import Image

from avhgr import preprocess
from avhgr.datasets import index_dataset, select_emotions
from avhgr.decode import MediaError
from avhgr.features import FeatureSettings
from avhgr.preprocess import make_cropper, process_file, run_preprocess
from avhgr.synth import tone, write_media

SMALL = FeatureSettings(windows=4, face_size=32)
STILL_REASON = "a still image (PNG), not a video"
INTERNAL = ("torch", "Traceback", "Error", "expected a non-empty")  # texts a user should never see


def readable(reason: str) -> bool:
    return "\n" not in reason and not any(t in reason for t in INTERNAL)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """A folder dataset: a 16 x 16 px clip, a one-frame video, and a PNG named .mp4."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "happiness").mkdir()
    (root / "sadness").mkdir()
    # 16 px is under MTCNN's smallest scale (min_face 40): detection has nothing to run on.
    tiny = [np.full((16, 16, 3), 90 + 10 * i, np.uint8) for i in range(10)]
    write_media(root / "happiness" / "tiny_16px.mp4", tiny, 10, tone(1.0))
    write_media(root / "happiness" / "one_frame.mp4", face_frames(1), 10)
    Image.fromarray(face_frames(1)[0]).save(root / "sadness" / "still_png.mp4", format="PNG")
    return root


@pytest.fixture(scope="module")
def cropper():
    return make_cropper(SMALL)


def test_frames_smaller_than_mtcnn_scale_give_no_face(hostile, cropper):
    result = process_file(hostile / "happiness" / "tiny_16px.mp4", SMALL, cropper)
    assert result["face_found"].tolist() == [False] * 4  # handled like any faceless window
    assert result["faces"].shape == (4, 32, 32, 3) and result["specs"].shape[0] == 4


def test_one_frame_video_is_a_video(hostile, cropper):
    result = process_file(hostile / "happiness" / "one_frame.mp4", SMALL, cropper)
    assert result["face_found"].all() and result["meta"]["has_video"]


@pytest.mark.parametrize("name, kind", [("still_png.mp4", "PNG"), ("still.png", "PNG"), ("still_jpeg.mp4", "JPEG")])
def test_still_image_is_refused_in_words(cropper, tmp_path, name, kind):
    path = tmp_path / name
    Image.fromarray(face_frames(1)[0]).save(path, format=kind)
    with pytest.raises(MediaError) as err:
        process_file(path, SMALL, cropper)
    assert err.value.reason == f"a still image ({kind}), not a video"


def test_run_preprocess_records_readable_reasons(hostile, tmp_path):
    videos, classes = select_emotions(index_dataset("folder", hostile), "happiness,sadness")
    report = run_preprocess(videos, classes, tmp_path / "cache", SMALL, hostile, "folder", progress=False)
    assert report["videos_ok"] == 2
    assert [(Path(f["path"]).name, f["reason"]) for f in report["failed"]] == [("still_png.mp4", STILL_REASON)]
    assert all(readable(f["reason"]) for f in report["failed"])
    assert not (tmp_path / "cache" / preprocess.ERRORS_LOG).exists()


def test_cli_preprocess_has_no_traceback(hostile, tmp_path):
    cmd = [sys.executable, "-m", "avhgr", "preprocess", "--dataset", "folder", "--root", str(hostile), "--out",
           str(tmp_path / "c"), "--windows", "4", "--face-size", "32", "--workers", "1", "--emotions", "happiness,sadness"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout and "torch.cat" not in res.stderr + res.stdout
    assert f"still_png.mp4: {STILL_REASON}" in res.stdout


def test_an_unexpected_exception_is_reported_not_hidden(hostile, tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")

    monkeypatch.setattr(preprocess, "process_file", bug)
    videos, classes = select_emotions(index_dataset("folder", hostile), "happiness")
    out = tmp_path / "cache"
    report = run_preprocess(videos[:1], classes, out, SMALL, hostile, "folder", progress=False)
    reason = report["failed"][0]["reason"]
    assert reason.startswith("internal error, a bug in avhgr: please report it") and readable(reason)
    log = (out / preprocess.ERRORS_LOG).read_text()
    assert "Traceback" in log and "ValueError: torch.cat(): expected" in log  # the bug's details are kept
    assert capsys.readouterr().err.count("warning: ") == 1  # and said once on stderr
