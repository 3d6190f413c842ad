"""The training recipe's mechanisms on small inputs: augmentation, feature normalisation, λ warm-up,
learning-rate schedule, window draws, spectrogram levels, speech detection."""

import math

import numpy as np
import pytest
import torch

from avhgr.augment import crop_and_flip, mask_spectrograms, shift_mels
from avhgr.data import Batch, draw_windows, level_offsets
from avhgr.features import FeatureSettings, has_speech, log_mel
from avhgr.models import FEATURE_DIM, AVHGRModel
from avhgr.train import RunError, Stage, TrainConfig

from test_models import make_batch


def test_spectrogram_masks_touch_only_whole_bands_and_leave_absent_rows_zero():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 94, 94)
    x[3] = 0  # an absent window
    torch.manual_seed(1)
    shifted = shift_mels(x.clone())
    torch.manual_seed(1)
    out = mask_spectrograms(x)  # the same shifts (drawn first), then the masks
    assert (out[3] == 0).all()
    changed = out != shifted
    # Only zeros are written, and only along whole Mel rows or whole time columns.
    assert (out[changed] == 0).all()
    for i in range(16):
        rows = changed[i, 0].all(dim=1) | (shifted[i, 0] == 0).all(dim=1)
        cols = changed[i, 0].all(dim=0) | (shifted[i, 0] == 0).all(dim=0)
        assert (changed[i, 0] <= rows[:, None] | cols[None, :]).all()
        assert changed[i, 0].float().mean() < 0.6  # two bands of <= 12 bins and two of <= 12 frames
    assert changed.any()


def test_mel_shift_moves_whole_spectra_by_at_most_four_bins():
    x = torch.arange(94.0).view(1, 1, 94, 1).repeat(32, 1, 1, 5)
    torch.manual_seed(1)
    out = shift_mels(x)
    shift = 47 - out[:, 0, 47, 0]  # the middle bin tells each row's shift (bin b shows what was at b - shift)
    assert shift.abs().max() <= 4 and len(set(shift.tolist())) > 3
    for i, s in enumerate(shift.long().tolist()):
        expected = (torch.arange(94) - s).clamp(0, 93).float()
        assert torch.equal(out[i, 0, :, 0], expected) and torch.equal(out[i, 0, :, 4], expected)


def test_face_crop_and_flip_keep_shape_zero_rows_and_flip_half():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    x[5] = 0
    out = crop_and_flip(x)
    assert out.shape == x.shape and (out[5] == 0).all()
    left_right = torch.zeros(1, 3, 32, 32)
    left_right[..., :16] = 1.0  # bright left half
    torch.manual_seed(0)
    flipped = crop_and_flip(left_right.repeat(200, 1, 1, 1))
    share = (flipped[:, 0, 16, 2] < 0.5).float().mean()  # the leftmost columns dark: flipped
    assert 0.35 < share < 0.65


def test_rescale_preserves_the_fused_outputs():
    """rescale multiplies f and g by α and divides the fusion's first layer by α: the same logits
    as the unscaled model, and unit total variance of the features on the calibration batches."""
    torch.manual_seed(0)
    model = AVHGRModel(6, "resnet18", feature_norm="rescale").eval()
    batch = make_batch(visual=torch.randn(12, 3, 32, 32), audio=torch.randn(12, 1, 32, 32))
    before = model(batch).logits
    model.calibrate([batch])
    after = model(batch)
    torch.testing.assert_close(after.logits, before, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model.scale, torch.ones(2))
    for feats in (after.f, after.g):
        assert feats.var(dim=0).sum().item() == pytest.approx(1.0, rel=1e-3)


def test_batch_feature_norm_bounds_soft_hgr_and_zeroes_missing_rows():
    from avhgr.losses import soft_hgr

    torch.manual_seed(0)
    model = AVHGRModel(6, "resnet18", feature_norm="batch").train()
    present = torch.tensor([True] * 10 + [False, False])
    batch = make_batch(visual=torch.randn(12, 3, 32, 32) * 50, audio=torch.randn(12, 1, 32, 32) * 50, visual_present=present)
    out = model(batch)
    assert (out.f[10:] == 0).all()
    # standardised over the present rows, divided by √512: total variance 1 (per-dimension variance 1/512)
    assert out.f[:10].var(dim=0, unbiased=False).sum().item() == pytest.approx(1.0, rel=0.02)
    assert -1.5 <= soft_hgr(out.f, out.g).item() <= 1.0
    # 64 px: at 32 px ResNet's last BatchNorm sees 1 x 1 maps and refuses a single row anyway
    single = make_batch(visual=torch.randn(2, 3, 64, 64), audio=torch.randn(2, 1, 64, 64), visual_present=torch.tensor([True, False]))
    assert model(single).f.shape == (2, FEATURE_DIM)  # one present row: the running statistics, no error


def test_lambda_warm_up_and_cosine_schedule():
    cfg = TrainConfig(cache="c", out="o", lam=2.0, lam_warmup=2, lr=1e-3, schedule="cosine", epochs=4)
    assert cfg.lam_at(0, 0, 10) == 0.0
    assert cfg.lam_at(0, 5, 10) == pytest.approx(0.5)  # a quarter of the way: 0.25 · λ
    assert cfg.lam_at(1, 5, 10) == pytest.approx(1.5)
    assert cfg.lam_at(2, 0, 10) == cfg.lam_at(3, 9, 10) == 2.0
    stage = Stage("stage2", None, [], 4, 10, corr="fgh")
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [cfg.lr_at(stage, e) for e in range(4)] == pytest.approx(cosine)
    stage1 = Stage("stage1_audio", None, [], 4, 1)
    assert [cfg.lr_at(stage1, e) for e in range(4)] == pytest.approx(cosine)
    lower = TrainConfig(cache="c", out="o", lr=1e-3, joint_lr=1e-4, schedule="constant")
    assert (lower.lr_at(stage, 2), lower.lr_at(stage1, 2)) == (1e-4, 1e-3)  # --joint-lr acts in stage 2 only
    with pytest.raises(RunError, match="--joint-lr must be positive"):
        TrainConfig(cache="c", out="o", joint_lr=0)  # 0 no longer means "the same as --lr"
    with pytest.raises(RunError, match="--windows-per-epoch must be all or"):
        TrainConfig(cache="c", out="o", windows_per_epoch=0)  # nor does 0 mean "all"
    assert TrainConfig(cache="c", out="o", windows_per_epoch="7").windows_per_epoch == 7
    assert TrainConfig(cache="c", out="o", recipe="paper").lam_at(0, 0, 10) == 1.0
    paper = TrainConfig(cache="c", out="o", recipe="paper")
    assert (paper.feature_norm, paper.weight_decay, paper.schedule, paper.spec_augment, paper.evidence) == ("none", 0.0, "constant", False, False)
    assert TrainConfig(cache="c", out="o", recipe="paper", feature_norm="batch").feature_norm == "batch"  # explicit beats recipe
    with pytest.raises(RunError, match="--recipe"):
        TrainConfig(cache="c", out="o", recipe="mine")


def test_windows_are_drawn_anew_per_video_and_epoch():
    class FakeCache:
        windows = {"video": np.repeat(np.arange(5), 8)}

    windows = np.arange(40)
    a = draw_windows(FakeCache, windows, 3, np.random.default_rng([0, 1, 0]))
    b = draw_windows(FakeCache, windows, 3, np.random.default_rng([0, 1, 1]))
    assert len(a) == 15 and np.bincount(FakeCache.windows["video"][a]).tolist() == [3] * 5
    assert not np.array_equal(a, b)  # another epoch, another draw
    assert np.array_equal(a, draw_windows(FakeCache, windows, 3, np.random.default_rng([0, 1, 0])))  # seeded
    assert len(draw_windows(FakeCache, windows[:10], 3, np.random.default_rng(0))) == 3 + 2  # video 1 has only 2 left
    rng = np.random.default_rng(0)
    kept = draw_windows(FakeCache, windows[::-1], 8, rng)  # no video has more than 8: no draw, and no random number used
    assert np.array_equal(kept, windows[::-1]) and rng.random() == np.random.default_rng(0).random()


def test_level_offsets_remove_loudness():
    rng = np.random.default_rng(0)
    t = np.arange(24_000) / 48_000
    quiet = (0.05 * np.sin(2 * np.pi * 220 * t) * (rng.random(24_000) * 0.2 + 0.9)).astype(np.float32)
    s = FeatureSettings()
    specs = log_mel(np.stack([quiet, 10 * quiet]), s)
    window = level_offsets(specs, "window")
    levelled = specs - window[:, None, None]
    np.testing.assert_allclose(levelled[0], levelled[1], atol=1e-3)  # 20 dB louder, the same after levelling
    np.testing.assert_allclose(window, [np.percentile(s, 95) for s in specs], rtol=1e-6)
    recording = level_offsets(specs, "recording")  # one level for the whole recording: the windows keep their difference
    assert recording[0] == recording[1] == pytest.approx(np.percentile(specs, 95), rel=1e-6)
    assert window[0] < recording[0] < window[1]  # the loud window's dB dominate the recording's 95th percentile
    np.testing.assert_allclose((specs - recording[:, None, None])[1] - (specs - recording[:, None, None])[0], specs[1] - specs[0], rtol=1e-6)
    assert (level_offsets(specs, "absolute") == 0).all()
    with pytest.raises(ValueError):
        level_offsets(specs, "loud")


def test_speech_detection_on_the_spectrogram():
    s = FeatureSettings()
    rng = np.random.default_rng(0)
    t = np.arange(24_000) / 48_000
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8)) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    windows = np.stack([0.3 * voiced, np.zeros_like(t), 0.3 * rng.normal(size=t.size), 0.001 * voiced]).astype(np.float32)
    assert has_speech(log_mel(windows, s)).tolist() == [True, False, False, False]  # voice; silence; hiss; a far whisper of it


def test_modality_dropout_takes_one_input_from_a_share_of_the_rows_that_have_both():
    from avhgr.augment import drop_modalities

    rows = torch.ones(2000, 3, dtype=torch.bool)
    rows[:100, 0] = False  # no face: nothing to take
    out = drop_modalities(rows, 0.3, np.random.default_rng(0))
    both = rows[:, 0] & rows[:, 1]
    lost = both & ~(out[:, 0] & out[:, 1])
    assert 0.27 < lost.float().sum() / both.sum() < 0.33
    assert (out[:, 0] | out[:, 1]).all() and torch.equal(out[:100], rows[:100]) and torch.equal(out[:, 2], rows[:, 2])
    assert 0.4 < (~out[lost, 0]).float().mean() < 0.6  # the face or the voice, even odds
    # Two processes holding halves of the batch draw what one process holding all of it draws.
    halves = [drop_modalities(rows[:1000], 0.3, np.random.default_rng(0), 0, 2000), drop_modalities(rows[1000:], 0.3, np.random.default_rng(0), 1000, 2000)]
    assert torch.equal(torch.cat(halves), out)


def test_feature_noise_leaves_absent_rows_zero():
    from avhgr.augment import jitter_features

    torch.manual_seed(0)
    x = torch.randn(4000, 35)
    x[:10] = 0
    out = jitter_features(x, 0.5)
    assert (out[:10] == 0).all()
    assert (out[10:] - x[10:]).std().item() == pytest.approx(0.5, rel=0.03)


def test_the_recipes_batch_and_window_draw():
    ours, paper = TrainConfig(cache="c", out="o"), TrainConfig(cache="c", out="o", recipe="paper")
    assert (ours.batch_size, ours.windows_per_epoch, paper.batch_size, paper.windows_per_epoch) == (64, 20, 90, "all")
    assert TrainConfig(cache="c", out="o", batch_size=32).batch_size == 32
    with pytest.raises(RunError, match="--batch-size must be at least 2"):
        TrainConfig(cache="c", out="o", batch_size=1)


def test_a_draw_of_at_least_every_cached_window_trains_as_all(tiny, tmp_path):
    """The tiny cache has 4 windows per video: drawing 20 of them keeps them all, and must not
    reshuffle (the demo's 6-window cache trains under the default draw exactly as with "all")."""
    from avhgr.runs import weights_digest
    from avhgr.train import train

    kw = dict(cache=str(tiny / "cache"), modalities=("audio",), epochs=1, backbone="resnet18", batch_size=16,
              device="cpu", amp=False)  # fmt: skip
    digest = {}
    for k in ("all", 20, 3):
        train(TrainConfig(out=str(tmp_path / str(k)), windows_per_epoch=k, **kw), log=lambda *a: None)
        digest[k] = weights_digest(tmp_path / str(k) / "model.safetensors")
    assert digest[20] == digest["all"]
    assert digest[3] != digest["all"]  # a real draw: other windows, another model


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    import json

    from avhgr.runs import RunFolder

    newer = ("feature_noise", "modality_dropout", "fusion", "audio_weight")
    for kw in ({}, {"corr": "none"}, {"modalities": ("audio",)}):  # a joint run with L_corr, the baseline, a unimodal run
        settings = {"train": TrainConfig(cache="c", out="o", **kw).to_json(), "cache_settings": {"windows": 4}}
        old = {**settings, "train": {k: v for k, v in settings["train"].items() if k not in newer}}
        (tmp_path / "config.json").write_text(json.dumps(old))
        RunFolder(tmp_path).check(settings, resume=True)  # no noise, no dropout, the fusion network: the same run
    settings = {"train": TrainConfig(cache="c", out="o").to_json(), "cache_settings": {"windows": 4}}
    old = {**settings, "train": {k: v for k, v in settings["train"].items() if k not in newer}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(RunError):  # a joint run made before --fusion existed trained a fusion network, not the product
        RunFolder(tmp_path).check({**settings, "train": TrainConfig(cache="c", out="o", fusion="product").to_json()}, resume=True)
    noisy = {**settings, "train": {**settings["train"], "feature_noise": 0.5}}
    with pytest.raises(RunError):
        RunFolder(tmp_path).check(noisy, resume=True)
