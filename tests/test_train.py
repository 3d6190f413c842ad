"""Training, evaluation and prediction on a tiny cache built from the demo corpus."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import avhgr.predict
from avhgr.data import labeled_subset, split_videos
from avhgr.evaluate import evaluate_run, missing_assignment
from avhgr.predict import Predictor
from avhgr.synth import tone, write_media
from avhgr.train import RunError, TrainConfig, Trainer, train

TINY = dict(backbone="resnet18", batch_size=16, lr=1e-3, device="cpu")


def test_splits_are_by_video_stratified_and_seeded():
    labels = {v: v % 6 for v in range(120)}
    subjects = {v: f"s{v % 12}" for v in range(120)}
    s = split_videos(labels, subjects, "random", seed=3)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(120))
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (84, 18, 18)
    assert all(sum(labels[v] == c for v in s["test"]) == 3 for c in range(6))
    assert s == split_videos(labels, subjects, "random", seed=3) and s != split_videos(labels, subjects, "random", seed=4)
    a = split_videos(labels, subjects, "actor", seed=0)
    people = [{subjects[v] for v in a[k]} for k in ("train", "val", "test")]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(120)) and len(people[2]) == 2


def test_labeled_subset_is_stratified():
    labels = {v: v % 3 for v in range(30)}
    keep = labeled_subset(list(range(30)), labels, 0.2)
    assert len(keep) == 6 and all(sum(labels[v] == c for v in keep) == 2 for c in range(3))
    assert len(labeled_subset(list(range(30)), labels, 0.01)) == 3  # at least one per class
    with pytest.raises(ValueError):
        labeled_subset([1], labels, 0.0)


@pytest.fixture(scope="module")
def trained(tiny):
    out = tiny / "run_fgh"
    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=4, pretrain_epochs=4, keep_states=True, **TINY)
    return out, train(cfg, log=lambda *a: None)


def read_metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_the_loss_and_writes_the_run(trained):
    out, report = trained
    rows = read_metrics(out)
    for stage in ("stage1_audio", "stage1_visual", "stage2"):
        losses = [float(r["ce"]) for r in rows if r["stage"] == stage]
        assert len(losses) == 4 and losses[-1] < losses[0], (stage, losses)
    corr = [float(r["corr"]) for r in rows if r["stage"] == "stage2"]
    assert corr[-1] < corr[0]  # -H falls: the features become more correlated
    for name in ("config.json", "split.json", "model.json", "model.safetensors", "report.json", "test_confusion.png", "test_confusion.json"):
        assert (out / name).exists(), name
    assert 0 <= report["video_accuracy"] <= 1 and report["videos"] == 6
    assert np.array(report["confusion"]).sum() == 6
    assert any(p.name.startswith("events") for p in (out / "tb").iterdir())


def test_best_epoch_is_kept(trained):
    out, _ = trained
    rows = [r for r in read_metrics(out) if r["stage"] == "stage2"]
    accs = [float(r["val_video_acc"]) for r in rows]
    state = torch.load(out / "stage2.last.pt", weights_only=True)  # kept: keep_states=True
    assert state["best_epoch"] == int(np.argmax(accs)) + 1  # the first epoch of the best accuracy
    stage2 = json.loads((out / "report.json").read_text())["stages"]["stage2"]
    assert (stage2["epochs"], stage2["best_epoch"]) == (4, state["best_epoch"])
    assert stage2["best_val_video_accuracy"] == pytest.approx(max(accs), abs=1e-6)
    from safetensors.torch import load_file

    best, final = load_file(str(out / "stage2.safetensors")), load_file(str(out / "model.safetensors"))
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    if state["best_epoch"] < 4:  # the last epoch's weights differ from the kept ones
        assert not all(torch.equal(state["model"][k], best[k]) for k in best)


def test_labeled_fraction_masks_labels(tiny):
    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(tiny / "semi"), labeled_fraction=0.5, epochs=0, pretrain_epochs=0, **TINY)
    trainer = Trainer(cfg, log=lambda *a: None)
    split = json.loads((tiny / "semi" / "split.json").read_text())
    assert sum(e["labeled"] for e in split["train"]) == 6  # half of the 2 training videos of each of 6 classes
    from avhgr.data import windows_of
    from avhgr.models import AVHGRModel

    model = AVHGRModel(6, "resnet18").eval()
    windows = windows_of(trainer.cache, trainer.split["train"])
    batch = trainer.reader.read(windows, trainer.labeled).to("cpu")
    assert 0 < batch.labeled.sum() < len(windows)
    torch.manual_seed(0)
    _, ce, corr = trainer.loss(model, batch)
    flipped = batch.labels.clone()
    flipped[~batch.labeled] = (flipped[~batch.labeled] + 1) % 6  # unlabelled rows' labels must not matter
    batch.labels = flipped
    _, ce2, corr2 = trainer.loss(model, batch)
    assert ce2.item() == pytest.approx(ce.item()) and corr2.item() == pytest.approx(corr.item())
    batch.labels[batch.labeled] = (batch.labels[batch.labeled] + 1) % 6
    _, ce3, _ = trainer.loss(model, batch)
    assert ce3.item() != pytest.approx(ce.item())


def test_resume_ends_where_an_uninterrupted_run_does(tiny):
    kw = dict(cache=str(tiny / "cache"), epochs=3, pretrain_epochs=2, **TINY)
    whole = train(TrainConfig(out=str(tiny / "whole"), **kw), log=lambda *a: None)

    class Killed(Exception):
        pass

    def die_mid_stage2(msg):
        if msg.startswith("stage2 epoch 1/"):
            raise Killed

    with pytest.raises(Killed):
        train(TrainConfig(out=str(tiny / "cut"), **kw), log=die_mid_stage2)
    assert not (tiny / "cut" / "report.json").exists()
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(out=str(tiny / "cut"), **kw))
    resumed = train(TrainConfig(out=str(tiny / "cut"), **kw), resume=True, log=lambda *a: None)
    assert resumed["video_accuracy"] == whole["video_accuracy"]
    assert resumed["predictions"] == whole["predictions"]
    assert (tiny / "cut" / "model.safetensors").read_bytes() == (tiny / "whole" / "model.safetensors").read_bytes()
    assert [r["loss"] for r in read_metrics(tiny / "cut")] == [r["loss"] for r in read_metrics(tiny / "whole")]
    # A finished run keeps its weights and drops its optimiser states (they are 3x the weights).
    for run in ("whole", "cut"):
        assert not list((tiny / run).glob("*.last.pt")) and not (tiny / run / "stage2.safetensors").exists()
        assert (tiny / run / "stage1_audio.safetensors").exists() and (tiny / run / "model.safetensors").exists()
    # Resuming a finished run reads its report back and trains nothing.
    again = train(TrainConfig(out=str(tiny / "whole"), **kw), resume=True, log=lambda *a: pytest.fail(f"trained: {a}"))
    assert again["predictions"] == whole["predictions"]


def test_unimodal_runs_and_init_from(trained, tiny):
    out, _ = trained
    audio = train(TrainConfig(cache=str(tiny / "cache"), out=str(tiny / "audio"), modalities=("audio",), init_from=str(out), **TINY))
    assert audio["videos"] == 6
    assert json.loads((tiny / "audio" / "model.json").read_text())["modalities"] == ["audio"]


def test_evaluate_with_missing_modalities(trained):
    out, report = trained
    full = evaluate_run(out, device="cpu")
    assert full["video_accuracy"] == pytest.approx(report["video_accuracy"])
    gone = evaluate_run(out, missing="visual", rate=1.0, device="cpu")
    assert gone["videos_missing"] == 6
    drop = missing_assignment(list(range(10)), "both", 0.8, seed=1)
    assert len(drop) == 8 and sorted(drop.values()).count("audio") == 4
    assert missing_assignment(list(range(10)), "audio", 0.2) == missing_assignment(list(range(10)), "audio", 0.2)


def test_predict_on_files(trained, tiny, monkeypatch):
    out, _ = trained
    predictor = Predictor(out, device="cpu")
    res = predictor.predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert res["emotion"] in predictor.classes and res["missing"] == []
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(res["timeline"]) == 4 and res["timeline"][0]["start"] <= res["timeline"][-1]["start"]
    audio_only = write_media(tiny / "voice.wav", audio=tone(1.0, 16_000, 140), sample_rate=16_000)
    assert predictor.predict_file(audio_only)["missing"] == ["visual"]
    denser = Predictor(out, device="cpu", windows=7).predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert denser["windows"] == 7 and len(denser["timeline"]) == 7
    monkeypatch.setattr(avhgr.predict, "PREDICT_BATCH", 3)  # the same windows in three forward passes
    batched = Predictor(out, device="cpu", windows=7).predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert batched["probabilities"] == pytest.approx(denser["probabilities"], abs=1e-4)
    assert [w["emotion"] for w in batched["timeline"]] == [w["emotion"] for w in denser["timeline"]]
