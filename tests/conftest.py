"""Shared fixtures: real media files generated with PyAV (nothing committed), and ../shared/data."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from avhgr.synth import face_photo, place, tone, write_media

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def face_frames(n: int, size=(240, 320), scale=0.45, drift=0.0):
    photo = face_photo()
    h, w = size
    return [place(size, photo, (w / 2 + drift * np.sin(i / 3), h / 2), scale) for i in range(n)]


def gray_frames(n: int, size=(64, 96)):
    """Frame i is uniformly gray at level 10 + 12·i: which frame came back can be read off."""
    return [np.full((*size, 3), 10 + 12 * i, dtype=np.uint8) for i in range(n)]


_FREE_AT_START: list[float] = []


def pytest_sessionstart(session):
    _FREE_AT_START.append(shutil.disk_usage(tempfile.gettempdir()).free / 2**30)


def pytest_terminal_summary(terminalreporter):
    """Runs take disk (the suite's peak is in the README): say how much there was, so that a full
    disk reads as that and not as a cascade of failing tests."""
    if _FREE_AT_START:
        low = "  LOW: the suite needs about 3 GB" if _FREE_AT_START[0] < 3 else ""
        terminalreporter.write_line(f"temporary folder {tempfile.gettempdir()}: {_FREE_AT_START[0]:.1f} GB free at the start{low}")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small folder dataset (root/<label>/file) of good, odd and broken files."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "happiness").mkdir()
    (root / "sadness").mkdir()
    fps = 10
    write_media(root / "happiness" / "face av.mp4", face_frames(20), fps, tone(2.0, 48_000, 200, channels=2))
    write_media(root / "sadness" / "face_44k_stereo.mkv", face_frames(16, drift=20), fps, tone(1.6, 44_100, 300, channels=2), sample_rate=44_100)
    write_media(root / "sadness" / "no_audio.mp4", face_frames(15), fps)
    write_media(root / "happiness" / "audio_only_8k.wav", audio=tone(1.5, 8_000, 250), sample_rate=8_000)
    write_media(root / "happiness" / "short_0.3s.mp4", face_frames(3), fps, tone(0.3, 48_000, 200))
    write_media(root / "sadness" / "portrait.mp4", face_frames(12, size=(320, 180), scale=0.3), fps, tone(1.2, 48_000, 300))
    good = (root / "happiness" / "face av.mp4").read_bytes()
    (root / "sadness" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "sadness" / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "happiness" / "empty.mp4").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def scratch(request, tmp_path_factory) -> Path:
    """A folder for one test module's runs (a trained run is ~0.3 GB, ~1 GB with its optimiser
    states), removed when the module is done unless one of its tests failed: the suite's peak disk
    use stays near one module's, not the sum of them all."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed = request.session.testsfailed
    yield root
    if request.session.testsfailed == failed:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not here (a fresh machine)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny cache of the demo corpus (6 classes x 5 videos, 4 windows, 32 px faces) in tiny/cache.
    Every face and every voice shows its own class (no misleading videos): each modality alone
    can tell the classes apart, so a network that is trained as it should learns."""
    from avhgr.datasets import index_dataset, select_emotions
    from avhgr.demo import EASY, CorpusSpec, build_corpus
    from avhgr.features import FeatureSettings
    from avhgr.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("tiny")
    manifest = build_corpus(root / "corpus", CorpusSpec(per_class=5, duration=1.2, **EASY))
    videos, classes = select_emotions(index_dataset("csv", manifest), "basic6")
    settings = FeatureSettings(windows=4, face_size=32, detect_size=320, min_face=30)
    run_preprocess(videos, classes, root / "cache", settings, manifest, "csv", progress=False)
    return root
