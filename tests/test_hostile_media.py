"""Hostile media and a killed parent (docs/reliability.md): each file gives windows without a face
or a one-line reason in words, never an internal exception text; no worker outlives preprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    assert result["visual"].shape == (4, 32, 32, 3) and result["specs"].shape[0] == 4


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


# ------------------------------------------------------------------ workers die with their parent

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZX"  # a zombie has ended (its reaper may be slow)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == str(pid):
            found.append(int(entry.name))
    return found


def _gone_within(pids, seconds: float) -> list[int]:
    """The pids still alive after ``seconds`` (killed then, so a failing test leaves none)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


@linux_only
def test_preprocess_workers_die_with_a_killed_parent(tmp_path):
    data = tmp_path / "data" / "happiness"
    data.mkdir(parents=True)
    write_media(data / "clip0.mp4", face_frames(10), 10, tone(1.0))
    for i in range(1, 24):  # enough work that the run is still going when it is killed
        (data / f"clip{i}.mp4").write_bytes((data / "clip0.mp4").read_bytes())
    cmd = [sys.executable, "-m", "avhgr", "preprocess", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out",
           str(tmp_path / "c"), "--windows", "4", "--face-size", "32", "--workers", "2", "--emotions", "happiness"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not any((tmp_path / "c" / "parts").glob("*.npz")):  # workers are up and working
            assert time.time() < deadline and proc.poll() is None, "no part file appeared"
            time.sleep(0.05)
        workers = [p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2
        everyone = _children(proc.pid)  # the workers and multiprocessing's resource tracker
    finally:
        proc.send_signal(signal.SIGKILL)  # as the OOM killer does: no cleanup runs
        proc.wait()
    assert not (tmp_path / "c" / "COMPLETE").exists(), "the run ended before it could be killed"
    assert _gone_within(everyone, 10) == []


# A grandchild of the test calls die_with_parent(its parent): via prctl (Linux), via the polling
# thread alone (sys.platform faked), or after its parent has already died (the start-up race).
_GRANDCHILD = """
import os, sys, time
from pathlib import Path
from avhgr.preprocess import die_with_parent
mode, parent, flag = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
if mode == "poll":
    sys.platform = "other"  # after the imports: only die_with_parent sees it
if mode == "race":
    flag.with_suffix(".started").write_text("")
    while os.getppid() == parent:
        time.sleep(0.05)
die_with_parent(parent, poll_seconds=60 if mode == "prctl" else 0.2)  # prctl: the thread is too slow to pass
flag.with_suffix(".ready").write_text("")
time.sleep(30)
flag.write_text("survived")
"""


@linux_only
@pytest.mark.parametrize("mode", ["prctl", "poll", "race"])
def test_die_with_parent(tmp_path, mode):
    flag = tmp_path / "flag"
    middle_code = (
        "import os, subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {_GRANDCHILD!r}, {mode!r}, str(os.getpid()), {str(flag)!r}])\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", middle_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    grandchild = int(middle.stdout.readline())
    wait_for = flag.with_suffix(".started" if mode == "race" else ".ready")
    deadline = time.time() + 60
    while not wait_for.exists():
        assert time.time() < deadline and _alive(grandchild), "the grandchild did not start"
        time.sleep(0.05)
    middle.kill()
    middle.wait()
    assert _gone_within([grandchild], 10) == []
    assert not flag.exists()
    if mode == "race":
        assert not flag.with_suffix(".ready").exists()  # it ended inside die_with_parent
