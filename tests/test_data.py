"""From cached windows to device batches: normalisation, presence masks, reading ahead."""

import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avhgr.data import IMAGENET_MEAN, IMAGENET_STD, device_batches, host_batch
from avhgr.models import AVHGRModel


def raw_windows(n=5, size=8, seed=0):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    specs = rng.normal(-30, 12, (n, 6, 7)).astype(np.float16)
    return faces, specs


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_normalisation_matches_the_formula(channels_last):
    faces, specs = raw_windows()
    visual_present = np.array([True, False, True, True, True])
    audio_present = np.array([True, True, True, False, True])
    batch = host_batch(faces, specs, visual_present, audio_present, (-31.5, 11.0), labels=np.arange(5) % 3).to("cpu", channels_last)
    expected = (faces.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    expected[~visual_present] = 0
    assert batch.visual.shape == (5, 3, 8, 8)
    np.testing.assert_allclose(batch.visual.numpy(), expected.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    assert batch.visual.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    spec_expected = (specs.astype(np.float32) + 31.5) / 11.0
    spec_expected[~audio_present] = 0
    np.testing.assert_allclose(batch.audio.numpy()[:, 0], spec_expected, rtol=1e-6, atol=1e-6)
    assert batch.labels.tolist() == [0, 1, 2, 0, 1] and batch.visual_present.device.type == "cpu"
    assert batch.rows.weight("visual", "audio").tolist() == [1, 0, 1, 0, 1]  # the losses' weights: the same masks


@pytest.mark.parametrize("spec_dtype", [np.float16, np.float32])
def test_moving_a_host_batch_leaves_it_unchanged(spec_dtype):
    """A host batch can go to the device twice (e.g. evaluated twice) with the same result."""
    faces, specs = raw_windows()
    host = host_batch(faces, specs.astype(spec_dtype), np.ones(5, bool), np.array([1, 1, 0, 1, 1], bool), (-30.0, 12.0))
    before = host.specs.clone(), host.visual.clone()
    first, second = host.to("cpu"), host.to("cpu")
    assert torch.equal(first.audio, second.audio) and torch.equal(first.visual, second.visual)
    assert torch.equal(host.specs, before[0]) and torch.equal(host.visual, before[1])


def test_device_batches_read_ahead_in_order_and_report_failures():
    faces, specs = raw_windows(n=40)
    calls, threads = [], set()

    def read(rows):
        calls.append(int(rows[0]))
        threads.add(threading.current_thread().name)
        return host_batch(faces[rows], specs[rows], np.ones(len(rows), bool), np.ones(len(rows), bool), (0.0, 1.0), videos=rows)

    chunks = [np.arange(i, i + 4) for i in range(0, 40, 4)]
    got = [b.video.tolist() for b in device_batches(read, chunks, "cpu", ahead=3)]
    assert got == [c.tolist() for c in chunks]  # every batch, in the order asked
    assert all(name.startswith("avhgr-read") for name in threads)
    alone = [b.visual for b in device_batches(read, chunks, "cpu", ahead=0)]
    assert all(torch.equal(a, b.visual) for a, b in zip(alone, device_batches(read, chunks, "cpu", ahead=3)))

    def failing(rows):
        if rows[0] == 12:
            raise OSError("cache.npy: read error")
        return read(rows)

    seen = []
    with pytest.raises(OSError, match="read error"):
        for b in device_batches(failing, chunks, "cpu", ahead=3):
            seen.append(int(b.video[0]))
    assert seen == [0, 4, 8]  # the batches before the failure, then the error itself


class CrossDeviceCopies(TorchDispatchMode):
    """Records every copy between devices that is not asynchronous (the host would wait)."""

    def __init__(self):
        super().__init__()
        self.blocking = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") not in (None, args[0].device):
            if not kwargs.get("non_blocking", False):
                self.blocking.append(f"{args[0].device} -> {kwargs['device']} {tuple(args[0].shape)}")
        return func(*args, **kwargs)


def test_training_step_never_waits_for_the_device():
    """On the "meta" device values are unknown, so anything that would make the host wait
    for a GPU (.item(), bool(tensor), indexing with a device boolean mask) raises; and a
    copy between host and device that is not asynchronous waits for the GPU too. The joint
    step (the trainer's own train_step: augmentation, standardised features, AdamW) runs there
    from a host batch, with rows missing a modality, level offsets and the semi-supervised
    labelled mask: no host sync in the step."""
    from types import SimpleNamespace

    from avhgr.distributed import DistInfo
    from avhgr.train import Stage, TrainConfig, train_step

    faces, specs = raw_windows(n=8, size=32)
    specs = np.repeat(np.repeat(specs, 5, 1), 5, 2)[:, :32, :32]
    visual_present = np.array([True, True, False, True, True, True, True, True])
    host = host_batch(faces, specs, visual_present, np.ones(8, bool), (0.0, 1.0), labels=np.arange(8) % 6,
                      labeled=np.arange(8) % 2 == 0, spec_level=np.full(8, -20.0))  # fmt: skip
    model = AVHGRModel(6, "resnet18", feature_norm="batch").to("meta")
    cfg = TrainConfig(cache="c", out="o", labeled_fraction=0.5)  # the default recipe: augmentation, AdamW
    session = SimpleNamespace(device=torch.device("meta"), amp=False, cfg=cfg, dist=DistInfo())
    stage = Stage("stage2", model, [], 1, 10, corr="fgh")
    opt = torch.optim.AdamW([p for p in model.parameters()], weight_decay=cfg.weight_decay)
    host.to("meta")  # once-per-device constants are made on the first batch
    with CrossDeviceCopies() as copies:
        batch = host.to("meta")
        losses = train_step(session, stage, model, opt, batch, lam=0.5)
    assert losses.device.type == "meta"
    assert copies.blocking == []
    with pytest.raises(RuntimeError):  # the premise: a sync on meta does fail
        bool(batch.rows.weight("labeled").any())
