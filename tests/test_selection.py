"""Comparisons that can tell: the kept model is one its own loss trained, finished runs check their
settings before answering, and the correlation loss is bounded where the README says so."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import avhgr.train
from avhgr.data import Batch, Rows
from avhgr.losses import joint_objective, soft_hgr, standardize
from avhgr.models import Output
from avhgr.runs import SettingsChanged
from avhgr.train import TrainConfig, train, train_owned

TINY = dict(backbone="resnet18", batch_size=16, lr=1e-3, device="cpu")


def scripted_validation(monkeypatch, per_stage: dict[str, list[float]]):
    """Session.validate answers from ``per_stage`` (a list per stage name, one value per epoch, in order)."""
    calls = {name: iter(values) for name, values in per_stage.items()}
    original = avhgr.train.fit

    def fit(s, run, stage, log=print, progress=False):
        s.validate = lambda model: {"video_accuracy": next(calls[stage.name]), "window_accuracy": 0.5}
        return original(s, run, stage, log, progress)

    monkeypatch.setattr(avhgr.train, "fit", fit)


def test_the_fusion_warm_up_is_never_the_kept_model(tiny, tmp_path, monkeypatch):
    """Where validation is best right after the warm-up (as on the demo corpus), the fg run must
    still keep a model that L_corr trained, not the warm-up model every method shares. Before the
    warm-up became a phase of its own, fg kept "epoch 1", the baseline's warm-up model."""
    scripted_validation(monkeypatch, {"stage1_audio": [0.5, 0.6], "stage1_visual": [0.5, 0.6], "stage2_warmup": [1.0] * 2,
                                      "stage2": [0.5, 0.5, 0.5, 0.5]})  # fmt: skip
    common = dict(cache=str(tiny / "cache"), epochs=2, joint_epochs=2, keep_states=True, **TINY)
    base = train(TrainConfig(out=str(tmp_path / "base"), corr="none", **common), log=lambda *a: None)
    fg = train(TrainConfig(out=str(tmp_path / "fg"), corr="fg", init_from=str(tmp_path / "base"), **common), log=lambda *a: None)
    warm_base = load_file(str(tmp_path / "base" / "stage2_warmup.safetensors"))
    warm_fg = load_file(str(tmp_path / "fg" / "stage2_warmup.safetensors"))
    assert all(torch.equal(warm_base[k], warm_fg[k]) for k in warm_base)  # the premise: one warm-up model for both
    kept = load_file(str(tmp_path / "fg" / "model.safetensors"))
    assert any(not torch.equal(kept[k], warm_fg[k]) for k in kept)  # fg's model is not the warm-up model ...
    assert any(not torch.equal(kept[k], v) for k, v in load_file(str(tmp_path / "base" / "model.safetensors")).items())  # ... nor the baseline's
    assert fg["stages"]["stage2"]["best_epoch"] == 1 and fg["stages"]["stage2_warmup"]["epochs"] == 1
    # Ties (the same video and window accuracy) keep the earlier epoch; the last epoch's test is reported beside it.
    assert base["stages"]["stage2"]["best_epoch"] == 1
    assert set(fg["last_epoch"]) == {"video_accuracy", "window_accuracy"}
    from avhgr.evaluate import evaluate_run
    from avhgr.runs import load_model

    model, card = load_model(tmp_path / "fg", torch.device("cpu"))
    model.load_state_dict(torch.load(tmp_path / "fg" / "stage2.resume.pt", weights_only=True)["model"])  # the last epoch's weights
    last = evaluate_run(tmp_path / "fg", device="cpu", model=model, card=card)
    assert fg["last_epoch"]["window_accuracy"] == last["window_accuracy"]


def test_window_accuracy_breaks_ties_of_video_accuracy(tiny, tmp_path, monkeypatch):
    answers = iter([(0.5, 0.4), (0.5, 0.6), (0.5, 0.6)])
    monkeypatch.setattr(avhgr.train.Session, "validate", lambda self, model: dict(zip(("video_accuracy", "window_accuracy"), next(answers))))
    report = train(TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "a"), modalities=("audio",), epochs=3, **TINY),
                   log=lambda *a: None)  # fmt: skip
    assert report["stages"]["stage1_audio"]["best_epoch"] == 2  # better window accuracy; the full tie of epoch 3 keeps 2


def test_a_finished_run_resumed_with_other_settings_never_returns_its_old_result(tiny, tmp_path):
    kw = dict(cache=str(tiny / "cache"), modalities=("audio",), **TINY)
    first = train(TrainConfig(out=str(tmp_path / "r"), epochs=1, **kw), log=lambda *a: None)
    with pytest.raises(SettingsChanged, match=r"other settings .*\(epochs\)"):
        train(TrainConfig(out=str(tmp_path / "r"), epochs=2, **kw), resume=True, log=lambda *a: None)
    again = train(TrainConfig(out=str(tmp_path / "r"), epochs=1, **kw), resume=True, log=lambda *a: pytest.fail("trained"))
    assert again["predictions"] == first["predictions"]  # the same settings: read back
    # The command line says so in one line, exit 2.
    cli = [sys.executable, "-m", "avhgr", "train", "--cache", str(tiny / "cache"), "--out", str(tmp_path / "r"), "--modalities", "audio",
           "--backbone", "resnet18", "--batch-size", "16", "--device", "cpu", "--resume"]  # fmt: skip
    res = subprocess.run([*cli, "--epochs", "5"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "(epochs)" in res.stderr and "Traceback" not in res.stderr
    # A folder of the caller's own (demo, build, benchmarks) is trained again instead.
    retrained = train_owned(TrainConfig(out=str(tmp_path / "r"), epochs=2, **kw), log=lambda *a: None)
    assert retrained["stages"]["stage1_audio"]["epochs"] == 2


def test_a_run_started_from_a_stage1_trained_again_is_not_read_back(tiny, tmp_path):
    """A study cell or the demo's fg run records the digests of the stage-1 weights it started
    from: once the base run is trained again (another result), the old cell is not returned."""
    kw = dict(cache=str(tiny / "cache"), epochs=1, joint_epochs=1, **TINY)
    train(TrainConfig(out=str(tmp_path / "base"), corr="none", **kw), log=lambda *a: None)
    child = TrainConfig(out=str(tmp_path / "fg"), corr="fg", init_from=str(tmp_path / "base"), **kw)
    train(child, log=lambda *a: None)
    train_owned(TrainConfig(out=str(tmp_path / "base"), corr="none", **{**kw, "epochs": 2}), log=lambda *a: None)
    with pytest.raises(SettingsChanged, match="init_weights"):
        train(child, resume=True, log=lambda *a: None)


def test_a_study_cell_under_other_settings_is_refused(tiny, tmp_path):
    from avhgr.study import StudyOptions, stability

    opt = StudyOptions.quick(str(tiny / "cache"), str(tmp_path / "s"), device="cpu", batch_size=16, layers=(1,), lams=(1.0,))
    stability(opt, log=lambda *a: None)
    with pytest.raises(SettingsChanged, match="epochs"):
        stability(StudyOptions.quick(str(tiny / "cache"), str(tmp_path / "s"), device="cpu", batch_size=16, layers=(1,), lams=(1.0,),
                                     epochs=2), log=lambda *a: None)  # fmt: skip


# ------------------------------------------------------------------ bounded by construction


def test_standardised_features_bound_every_soft_hgr_term_at_its_extremes():
    """Not on random features (where H is near 0): on features that agree or disagree as much as
    features can, at a scale of 1000."""
    torch.manual_seed(0)
    signal = torch.randn(64, 1) * 1000
    rank_one = signal.expand(-1, 16)  # every dimension the same signal
    iso = torch.randn(64, 16) * 1000
    assert soft_hgr(standardize(rank_one), standardize(rank_one)).item() == pytest.approx(0.5, abs=0.02)
    assert soft_hgr(standardize(rank_one), standardize(-rank_one)).item() == pytest.approx(-1.5, abs=0.05)  # the lower bound
    top = soft_hgr(standardize(iso), standardize(iso)).item()
    assert 0.9 < top <= 1.0 + 0.02  # near the upper bound: 1 - tr(Σ²)/2
    assert abs(soft_hgr(rank_one, rank_one).item()) > 1e5  # raw, the same features are unbounded


def make_joint_batch(n=40):
    every = torch.ones(n, dtype=torch.bool)
    return Batch(visual=None, audio=None, labels=torch.arange(n) % 6, video=torch.zeros(n, dtype=torch.long), rows=Rows.of(every, every))


def test_h_is_standardised_with_f_and_g_so_l_corr_fgh_starts_within_its_bounds():
    """--feature-norm batch standardises f and g in the model; the label feature h is standardised
    in the loss the same way. A label network with large weights made H(f, h) unbounded before."""
    torch.manual_seed(0)
    batch = make_joint_batch()
    onehot = torch.nn.functional.one_hot(batch.labels, 6).float()
    label_code = onehot @ torch.randn(6, 512)
    h = label_code * 500  # a label network with large weights
    f = standardize(label_code + 0.1 * torch.randn(40, 512))  # features that know the label, as h does
    g = standardize(label_code + 0.1 * torch.randn(40, 512))
    out = Output(logits=torch.zeros(40, 6), f=f, g=g, h=h)
    _, _, bounded = joint_objective(out, batch, "fgh", standardize_h=True)
    _, _, raw = joint_objective(out, batch, "fgh", standardize_h=False)
    assert -3.0 <= bounded.item() <= 4.5 and bounded.item() < -1.0  # strongly correlated: near its optimum, within bounds
    assert raw.item() > 1e3  # what "unbounded" meant
