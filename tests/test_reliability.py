"""Hostile files, untrusted checkpoints, failed writes: each case as a test (see docs/reliability.md)."""

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avhgr.cache import atomic_write_bytes
from avhgr.synth import face_photo, place, tone, write_media
from avhgr.runs import RunError, load_state, load_weights, save_state
from avhgr.train import TrainConfig, train
from conftest import face_frames, gray_frames

CLI = [sys.executable, "-m", "avhgr"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Every case of the reliability issue, as real files."""
    d = tmp_path_factory.mktemp("hostile")
    cases: dict[str, Path] = {}
    (d / "zero.mp4").write_bytes(b"")
    cases["zero-byte"] = d / "zero.mp4"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    cases["random bytes"] = d / "random.mp4"
    good = write_media(d / "good.mp4", face_frames(20), 10, tone(2.0, 48_000, 200, channels=2))
    cases["good"] = good
    (d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = d / "truncated.mp4"
    cases["no audio"] = write_media(d / "no_audio.mp4", face_frames(12), 10)
    cases["no video"] = write_media(d / "no_video.m4a".replace(".m4a", ".wav"), audio=tone(1.0, 48_000), sample_rate=48_000)
    cases["0.1 s clip"] = write_media(d / "tiny.mp4", face_frames(1), 10, tone(0.1, 48_000))
    cases["8 kHz mono"] = write_media(d / "mono8k.mp4", face_frames(10), 10, tone(1.0, 8_000, 300), sample_rate=8_000)
    cases["44.1 kHz 5.1"] = write_media(d / "surround.mp4", face_frames(10), 10, tone(1.0, 44_100, 300, channels=6), sample_rate=44_100)
    cases["portrait 1080x1920"] = write_media(d / "portrait.mp4", [place((1920, 1080), face_photo(), (540, 900), 1.2)] * 5, 5, tone(1.0, 48_000))
    cases["variable frame rate"] = write_media(d / "vfr.mp4", face_frames(6), 10, tone(1.0, 48_000), frame_times=[0, 0.05, 0.3, 0.35, 0.8, 0.95])
    two = [np.concatenate([f, f], axis=1) for f in face_frames(8)]
    cases["two faces"] = write_media(d / "two_faces.mp4", two, 10, tone(0.8, 48_000))
    cases["no face"] = write_media(d / "no_face.mp4", gray_frames(8, size=(120, 160)), 10, tone(0.8, 48_000))
    odd = d / "spaces and ünïcödé"
    odd.mkdir()
    cases["spaces + non-ASCII path"] = write_media(odd / "clip ø 1.mp4", face_frames(10), 10, tone(1.0, 48_000))
    (d / "a_folder.mp4").mkdir()
    cases["directory"] = d / "a_folder.mp4"
    cases["missing file"] = d / "does_not_exist.mp4"
    return cases


HANDLED = {"good", "no audio", "no video", "0.1 s clip", "8 kHz mono", "44.1 kHz 5.1", "portrait 1080x1920",
           "variable frame rate", "two faces", "no face", "spaces + non-ASCII path", "truncated"}  # fmt: skip
REFUSED = {"zero-byte": "empty file", "random bytes": "not a readable media file", "directory": "is a directory", "missing file": "no such file"}


@pytest.fixture(scope="module")
def model_run(tiny, scratch) -> Path:
    out = scratch / "run"
    train(TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=1, joint_epochs=1, backbone="resnet18", batch_size=16, device="cpu"),
          log=lambda *a: None)  # fmt: skip
    return out


def test_predict_handles_or_refuses_every_hostile_file(hostile, model_run):
    names = list(hostile)
    res = subprocess.run([*CLI, "predict", *[str(hostile[n]) for n in names], "--model", str(model_run), "--json", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 1  # some files were refused
    results = {Path(json.loads(line)["file"]): json.loads(line) for line in res.stdout.splitlines()}
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    for name in names:
        path = hostile[name]
        if name in REFUSED:
            line = next((e for e in errors if str(path) in e), None)
            assert line is not None and REFUSED[name] in line, (name, errors)
        elif name == "truncated" and path not in results:  # cut before its index: refused with a reason
            assert any(str(path) in e for e in errors)
        else:
            assert path in results, (name, res.stderr)
    assert results[hostile["no audio"]]["missing"] == ["audio"]
    assert results[hostile["no video"]]["missing"] == ["visual"]
    assert results[hostile["no face"]]["face_rate"] == 0.0  # no visual input, said so
    assert results[hostile["two faces"]]["face_rate"] == 1.0
    assert results[hostile["portrait 1080x1920"]]["face_rate"] == 1.0


def test_preprocess_goes_on_past_hostile_files(hostile, tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f'"{p}",happiness,s{i}' for i, (n, p) in enumerate(hostile.items())]
    manifest.write_text("path,label,subject\n" + "\n".join(rows) + "\n")
    res = subprocess.run([*CLI, "preprocess", "--dataset", "csv", "--root", str(manifest), "--out", str(tmp_path / "c"),
                          "--windows", "3", "--face-size", "32", "--workers", "2", "--emotions", "happiness"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    failed = {Path(f["path"]): f["reason"] for f in report["failed"]}
    for name, reason in REFUSED.items():
        assert reason in failed[hostile[name]], name
    assert report["videos_ok"] >= len(HANDLED) - 1  # the truncated file may be refused
    assert report["videos_ok"] + report["videos_failed"] == len(hostile)


def test_checkpoint_with_code_payload_is_refused_without_running_it(model_run, tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    evil = tmp_path / "stage2.resume.pt"
    evil.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(RunError, match="not a loadable training state"):
        load_state(evil)
    assert not marker.exists()
    # The same payload dressed as the weights file.
    bad_run = tmp_path / "run"
    bad_run.mkdir()
    for name in ("model.json", "config.json", "split.json"):
        (bad_run / name).write_bytes((model_run / name).read_bytes())
    (bad_run / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    res = subprocess.run([*CLI, "predict", str(model_run.parent), "--model", str(bad_run)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not a readable safetensors checkpoint" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_truncated_and_mismatched_checkpoints_give_clear_errors(model_run, tmp_path):
    from avhgr.models import AVHGRModel, ModalityNet

    cut = tmp_path / "cut.safetensors"
    data = (model_run / "model.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="not a readable safetensors checkpoint"):
        load_weights(AVHGRModel(6, "resnet18"), cut)
    with pytest.raises(RunError, match="does not match this model"):
        load_weights(ModalityNet(6, "audio", "resnet34"), model_run / "stage1_audio.safetensors")
    state = tmp_path / "state.pt"
    save_state({"model": AVHGRModel(6, "resnet18").state_dict(), "epoch": 1}, state)
    cut_state = tmp_path / "cut.pt"
    cut_state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(RunError, match="not a loadable training state"):
        load_state(cut_state)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_state({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        save_state({"epoch": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert load_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert not (tmp_path / "report.json").exists()


def test_cache_arrays_are_memory_mapped(tiny):
    from avhgr.cache import Cache

    cache = Cache.open(tiny / "cache")
    assert isinstance(cache.visual, np.memmap) and isinstance(cache.spectrograms, np.memmap)


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true; fail if it ended first."""
    import signal
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the command ended before it could be killed"
        assert time.time() < deadline, "timed out waiting to kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_during_train_then_resume_ends_like_an_uninterrupted_run(tiny, tmp_path):
    args = ["train", "--cache", str(tiny / "cache"), "--epochs", "2", "--joint-epochs", "3", "--backbone", "resnet18",
            "--batch-size", "16", "--device", "cpu"]  # fmt: skip
    whole = subprocess.run([*CLI, *args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    _kill_when([*CLI, *args, "--out", str(cut)], lambda: (cut / "stage2.resume.pt").exists())
    assert not (cut / "report.json").exists()
    resumed = subprocess.run([*CLI, *args, "--out", str(cut), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda p: [",".join(line.split(",")[:-1]) for line in p.read_text().splitlines()]  # noqa: E731 - drop the seconds column
    assert strip(cut / "metrics.csv") == strip(tmp_path / "whole" / "metrics.csv")
    assert (cut / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert json.loads((cut / "report.json").read_text())["predictions"] == json.loads((tmp_path / "whole" / "report.json").read_text())["predictions"]


def test_kill_9_during_study_then_rerun_finishes_the_same_table(tiny, tmp_path):
    args = ["study", "stability", "--cache", str(tiny / "cache"), "--quick", "--fusion-layers", "1", "--lam", "1", "--batch-size", "16", "--device", "cpu"]
    whole = subprocess.run([*CLI, *args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    _kill_when([*CLI, *args, "--out", str(cut)], lambda: len(list(cut.glob("runs/*/seed0/report.json"))) >= 2)
    assert not (cut / "stability.csv").exists()
    rerun = subprocess.run([*CLI, *args, "--out", str(cut)], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert (cut / "stability.csv").read_text() == (tmp_path / "whole" / "stability.csv").read_text()
