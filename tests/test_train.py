"""Training, evaluation and prediction on a tiny cache built from the demo corpus."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import avhgr.predict
import avhgr.train
from avhgr.data import labeled_subset, split_videos
from avhgr.evaluate import evaluate_run, missing_assignment
from avhgr.models import AVHGRModel
from avhgr.predict import Predictor
from avhgr.runs import RunError, load_state
from avhgr.synth import tone, write_media
from avhgr.train import Session, TrainConfig, train

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
def trained(tiny, scratch):
    out = scratch / "run_fgh"
    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=8, joint_epochs=4, keep_states=True, **TINY)
    return out, train(cfg, log=lambda *a: None)


def read_metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_the_loss_and_writes_the_run(trained):
    out, report = trained
    rows = read_metrics(out)
    for stage, epochs in (("stage1_audio", 8), ("stage1_visual", 8), ("stage2", 4)):
        losses = [float(r["ce"]) for r in rows if r["stage"] == stage]
        assert len(losses) == epochs and losses[-1] < losses[0], (stage, losses)
    corr = [float(r["corr"]) for r in rows if r["stage"] == "stage2"]
    assert corr[-1] < corr[0]  # -H falls: the features become more correlated
    for name in ("config.json", "split.json", "model.json", "model.safetensors", "report.json", "test_confusion.png", "test_confusion.json"):
        assert (out / name).exists(), name
    assert report["videos"] == 6 and np.array(report["confusion"]).sum() == 6
    assert [p["path"] for p in report["predictions"]] == [e["path"] for e in json.loads((out / "split.json").read_text())["test"]]
    assert any(p.name.startswith("events") for p in (out / "tb").iterdir())


def test_best_epoch_is_kept(trained):
    out, _ = trained
    rows = [r for r in read_metrics(out) if r["stage"] == "stage2"]
    accs = [float(r["val_video_acc"]) for r in rows]
    keys = [(float(r["val_video_acc"]), float(r["val_window_acc"])) for r in rows]
    state = torch.load(out / "stage2.resume.pt", weights_only=True)  # kept: keep_states=True
    assert state["best_epoch"] == keys.index(max(keys)) + 1  # the best video accuracy, then window accuracy, then the earlier epoch
    stage2 = json.loads((out / "report.json").read_text())["stages"]["stage2"]
    assert (stage2["epochs"], stage2["best_epoch"]) == (4, state["best_epoch"])
    assert stage2["best_val_video_accuracy"] == pytest.approx(max(accs), abs=1e-6)
    from safetensors.torch import load_file

    best, final = load_file(str(out / "stage2.safetensors")), load_file(str(out / "model.safetensors"))
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    if state["best_epoch"] < 4:  # the last epoch's weights differ from the kept ones
        assert not all(torch.equal(state["model"][k], best[k]) for k in best)


def test_labeled_fraction_masks_labels_in_the_training_step(tiny, tmp_path):
    """The trainer's own step (augmentation, standardised f, g and h, AdamW) with half the labels:
    the unlabelled rows' labels change nothing (loss, L_corr, updated weights), a labelled row's
    label does."""
    import copy

    from avhgr.distributed import DistInfo
    from avhgr.train import Stage, train_step

    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "semi"), labeled_fraction=0.5, epochs=0, joint_epochs=0, **TINY)
    session = Session(cfg, DistInfo())
    assert len(session.labeled) == 12  # half of the 3 training videos of each of 6 classes, rounded up
    torch.manual_seed(0)
    start = AVHGRModel(6, "resnet18", feature_norm="batch")
    windows = session.reader.windows(session.split["train"])[:24]
    host = session.reader.read(windows, session.labeled)
    labeled = host.rows[:, 2].clone()
    assert 0 < labeled.sum() < len(windows)

    def step(labels):
        model = copy.deepcopy(start)
        model.freeze_unused("fgh")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=cfg.weight_decay)
        torch.manual_seed(1)  # the same augmentation draws
        batch = host.to("cpu")
        batch.labels = labels
        losses = train_step(session, Stage("stage2", model, [], 1, 10, corr="fgh"), model, opt, batch, lam=1.0)
        return losses, model.state_dict()

    labels = host.labels.clone()
    losses, weights = step(labels)
    flipped = labels.clone()
    flipped[~labeled] = (flipped[~labeled] + 1) % 6  # unlabelled rows' labels must not matter
    same, same_weights = step(flipped)
    assert torch.equal(same, losses) and all(torch.equal(same_weights[k], weights[k]) for k in weights)
    changed = labels.clone()
    changed[torch.nonzero(labeled)[0]] = (changed[torch.nonzero(labeled)[0]] + 1) % 6  # one labelled row
    other, other_weights = step(changed)
    assert other[0] != losses[0] and other[1] != losses[1]  # its CE and its h terms
    assert not torch.equal(other_weights["label.weight"], weights["label.weight"])


def test_resume_ends_where_an_uninterrupted_run_does(tiny, tmp_path):
    kw = dict(cache=str(tiny / "cache"), epochs=2, joint_epochs=3, **TINY)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **kw), log=lambda *a: None)

    class Killed(Exception):
        pass

    def die_mid_stage2(msg):
        if msg.startswith("stage2 epoch 1/"):
            raise Killed

    with pytest.raises(Killed):
        train(TrainConfig(out=str(tmp_path / "cut"), **kw), log=die_mid_stage2)
    assert not (tmp_path / "cut" / "report.json").exists()
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(out=str(tmp_path / "cut"), **kw))
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, log=lambda *a: None)
    assert resumed["video_accuracy"] == whole["video_accuracy"]
    assert resumed["predictions"] == whole["predictions"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert [r["loss"] for r in read_metrics(tmp_path / "cut")] == [r["loss"] for r in read_metrics(tmp_path / "whole")]
    # A finished run keeps its weights and drops its optimiser states (they are 3x the weights).
    for run in ("whole", "cut"):
        assert not list((tmp_path / run).glob("*.resume.pt")) and not (tmp_path / run / "stage2.safetensors").exists()
        assert (tmp_path / run / "stage1_audio.safetensors").exists() and (tmp_path / run / "model.safetensors").exists()
    # Resuming a finished run reads its report back and trains nothing.
    again = train(TrainConfig(out=str(tmp_path / "whole"), **kw), resume=True, log=lambda *a: pytest.fail(f"trained: {a}"))
    assert again["predictions"] == whole["predictions"]


def test_unimodal_runs_and_init_from(trained, tiny, tmp_path):
    out, _ = trained
    audio = train(TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "audio"), modalities=("audio",), init_from=str(out),
                              epochs=8, **TINY))  # fmt: skip
    assert json.loads((tmp_path / "audio" / "model.json").read_text())["modalities"] == ["audio"]
    # The audio-only model is the source's stage-1 audio network, tested on the same videos.
    from safetensors.torch import load_file

    mine, theirs = load_file(str(tmp_path / "audio" / "model.safetensors")), load_file(str(out / "stage1_audio.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert sorted(p["path"] for p in audio["predictions"]) == sorted(e["path"] for e in json.loads((out / "split.json").read_text())["test"])


def test_a_network_taken_from_another_run_is_tested_on_the_run_s_device(trained, tiny, tmp_path, monkeypatch):
    """A unimodal run made with --init-from trains nothing: its network, read from the source run,
    must still be put on the device before the test (on a GPU it was left on the CPU: a crash)."""
    out, _ = trained
    from avhgr.models import ModalityNet

    moved, tested_on = [], []
    real_to, real_evaluate = ModalityNet.to, avhgr.train.evaluate_videos
    on_device = lambda a, k: any(isinstance(x, (torch.device, str)) for x in (*a, k.get("device")))  # noqa: E731  # not a memory format alone
    monkeypatch.setattr(ModalityNet, "to", lambda self, *a, **k: (on_device(a, k) and moved.append(self), real_to(self, *a, **k))[1])
    monkeypatch.setattr(avhgr.train, "evaluate_videos", lambda model, *a, **k: (tested_on.append(model in moved), real_evaluate(model, *a, **k))[1])
    train(TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "audio"), modalities=("audio",), init_from=str(out), epochs=8, **TINY))
    assert tested_on[0]  # the test (evaluation itself sets the memory format later, not the device)


def test_evaluate_with_missing_modalities(trained, tiny):
    """Visual missing for every test video is exactly the model fed no visual input at all."""
    from avhgr.cache import Cache
    from avhgr.data import WindowReader
    from avhgr.evaluate import evaluate_videos
    from avhgr.runs import load_model

    out, report = trained
    full = evaluate_run(out, device="cpu")
    assert full["predictions"] == report["predictions"]
    assert full["window_accuracy"] == report["window_accuracy"]  # the same windows in the same precision as the run's own test
    gone = evaluate_run(out, missing="visual", rate=1.0, device="cpu")
    assert gone["videos_missing"] == 6
    model, card = load_model(out, torch.device("cpu"))
    model.modalities = ("audio",)  # windows with speech, batches without faces
    cache = Cache.open(tiny / "cache")
    reader = WindowReader(cache, tuple(card["audio_stats"]), ("audio",), card["level"], card["evidence"])
    test = [e["id"] for e in json.loads((out / "split.json").read_text())["test"]]
    no_faces = evaluate_videos(model, reader, cache, test, torch.device("cpu"))
    assert [p["pred"] for p in gone["predictions"]] == [p["pred"] for p in no_faces["predictions"]]
    assert gone["window_accuracy"] == pytest.approx(no_faces["window_accuracy"])
    drop = missing_assignment(list(range(10)), "both", 0.8, seed=1)
    assert len(drop) == 8 and sorted(drop.values()).count("audio") == 4
    chosen = [set(missing_assignment(list(range(10)), "audio", 0.2, seed=s)) for s in range(5)]
    assert all(len(c) == 2 for c in chosen) and len({frozenset(c) for c in chosen}) > 1  # two videos, another pair per seed
    assert len(missing_assignment(list(range(10)), "visual")) == 10  # no rate: every video misses it


def test_predict_on_files(trained, tiny, tmp_path, monkeypatch):
    out, _ = trained
    predictor = Predictor(out, device="cpu")
    res = predictor.predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert res["emotion"] in predictor.classes and res["missing"] == []
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(res["timeline"]) == 4 and res["timeline"][0]["start"] <= res["timeline"][-1]["start"]
    audio_only = write_media(tmp_path / "voice.wav", audio=tone(1.0, 16_000, 140), sample_rate=16_000)
    assert predictor.predict_file(audio_only)["missing"] == ["visual"]
    denser = Predictor(out, device="cpu", windows=7).predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert denser["windows"] == 7 and len(denser["timeline"]) == 7
    monkeypatch.setattr(avhgr.predict, "PREDICT_BATCH", 3)  # the same windows in three forward passes
    batched = Predictor(out, device="cpu", windows=7).predict_file(tiny / "corpus" / "anger_00.mp4", timeline=True)
    assert batched["probabilities"] == pytest.approx(denser["probabilities"], abs=1e-4)
    assert [w["emotion"] for w in batched["timeline"]] == [w["emotion"] for w in denser["timeline"]]


def test_each_stage_learns_well_above_chance(trained):
    """Every face and every voice of the tiny corpus shows its class, so each network alone and
    the joint model must learn: best validation video accuracy at least 3 of 6 (chance: 1 of 6).
    (Before stage 1's visual network was validated on its own input, its best epoch was chosen on
    spectrograms and stayed at chance.)"""
    out, _ = trained
    rows = read_metrics(out)
    for stage in ("stage1_audio", "stage1_visual", "stage2"):
        best = max(float(r["val_video_acc"]) for r in rows if r["stage"] == stage)
        assert best >= 0.5, (stage, [r["val_video_acc"] for r in rows if r["stage"] == stage])
    first_step = json.loads((out / "report.json").read_text())["stages"]["stage2"]["first_step_corr"]
    assert abs(first_step) <= 10  # the joint stage starts sane: of the order of its optimum (2.5 a term for six classes)


def test_each_network_is_trained_and_validated_on_its_own_input(tiny, tmp_path, monkeypatch):
    """Every backbone (stage 1's two networks, the joint model's two) sees inputs of one shape
    only: 32 px faces for the visual ones, 94 x 94 spectrograms for the audio ones, in training
    and in validation alike. The old trainer validated stage 1's visual network on spectrograms."""
    import torchvision

    seen: dict[int, set] = {}
    original = torchvision.models.resnet.ResNet.forward

    def recording(self, x):
        seen.setdefault(id(self), set()).add((tuple(x.shape[1:]), self.training))
        return original(self, x)

    monkeypatch.setattr(torchvision.models.resnet.ResNet, "forward", recording)
    train(TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "run"), epochs=1, joint_epochs=1, **TINY), log=lambda *a: None)
    shapes = [{shape for shape, _ in calls} for calls in seen.values()]
    assert len(seen) == 4 and all(len(s) == 1 for s in shapes), shapes
    assert sorted(next(iter(s)) for s in shapes) == [(3, 32, 32), (3, 32, 32), (3, 94, 94), (3, 94, 94)]
    assert all({mode for _, mode in calls} == {True, False} for calls in seen.values())  # trained and validated


def test_stage2_starts_from_the_best_stage1_epochs(tiny, tmp_path, monkeypatch):
    """Validation accuracies are scripted so that stage 1's best epochs are not its last: the
    joint model's networks must start from the best ones (saved as stage1_*.safetensors)."""
    from safetensors.torch import load_file

    # audio: best epoch 2; visual: best epoch 1; the fusion warm-up; stage 2
    scripted = iter([0.2, 0.6, 0.4, 0.5, 0.3, 0.1, 0.9, 0.5])
    monkeypatch.setattr(avhgr.train.Session, "validate", lambda self, model: {"video_accuracy": next(scripted), "window_accuracy": 0.0})
    start = {}
    original = avhgr.train.train_epoch

    def snapshot(s, stage, train_model, opt, windows, epoch, progress=False):
        if stage.name == "stage2_warmup" and epoch == 0:
            start.update({f"{m}.{k}": v.clone() for m in ("audio", "visual") for k, v in getattr(stage.model, m).state_dict().items()})
        return original(s, stage, train_model, opt, windows, epoch, progress)

    monkeypatch.setattr(avhgr.train, "train_epoch", snapshot)
    out = tmp_path / "run"
    report = train(TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=3, joint_epochs=1, keep_states=True, **TINY),
                   log=lambda *a: None)  # fmt: skip
    assert report["stages"]["stage1_audio"]["best_epoch"] == 2 and report["stages"]["stage1_visual"]["best_epoch"] == 1
    for m in ("audio", "visual"):
        best = load_file(str(out / f"stage1_{m}.safetensors"))
        last = load_state(out / f"stage1_{m}.resume.pt")["model"]
        assert all(torch.equal(start[f"{m}.{k}"], v) for k, v in best.items()), m
        assert not all(torch.equal(start[f"{m}.{k}"], v) for k, v in last.items()), m  # not the last epoch's
        final = load_file(str(out / f"stage1_{m}.final.safetensors"))  # the last epoch's, kept for its test
        assert all(torch.equal(final[k], v) for k, v in last.items()), m
    # The fusion warm-up: the two networks' weights did not move (their BatchNorm statistics do),
    # the fusion network's did. Its validation (0.9, above stage 2's 0.5) is not stage 2's best.
    warm = load_file(str(out / "stage2_warmup.safetensors"))
    weights = [k for k in start if not k.split(".")[-1].startswith(("running_", "num_batches"))]
    assert all(torch.equal(warm[k], start[k]) for k in weights)
    assert any(not torch.equal(warm[k], start[k]) for k in start if "running_mean" in k)
    joint = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(joint[k], warm[k]) for k in weights)  # stage 2 trained the networks
    assert report["stages"]["stage2"]["best_epoch"] == 1 and report["stages"]["stage2_warmup"]["epochs"] == 1


def test_init_from_refuses_a_stage1_trained_on_other_videos_or_settings(trained, tiny, tmp_path):
    out, _ = trained
    base = dict(cache=str(tiny / "cache"), epochs=8, joint_epochs=0, init_from=str(out), **TINY)
    for change, reason in ((dict(seed=1), "seed"), (dict(split="actor"), "split"), (dict(labeled_fraction=0.5), "labeled_fraction"),
                           (dict(backbone="resnet34"), "backbone")):  # fmt: skip
        with pytest.raises(RunError, match=f"another .*{reason}"):
            train(TrainConfig(out=str(tmp_path / reason), **{**base, **change}), log=lambda *a: None)
    other = tmp_path / "other_cache"
    shutil.copytree(tiny / "cache", other)
    settings = json.loads((other / "settings.json").read_text())
    settings["features"]["seed"] = 7  # other windows of the same videos
    (other / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(RunError, match="cache settings"):
        train(TrainConfig(out=str(tmp_path / "cache"), **{**base, "cache": str(other)}), log=lambda *a: None)
    res = subprocess.run([sys.executable, "-m", "avhgr", "train", "--cache", str(tiny / "cache"), "--out", str(tmp_path / "cli"),
                          "--init-from", str(out), "--seed", "3", "--backbone", "resnet18", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "another seed" in res.stderr and "--init-from" in res.stderr
    # A refusal writes nothing: the same folder takes the corrected command.
    same = train(TrainConfig(out=str(tmp_path / "seed"), **base), log=lambda *a: None)
    assert same["predictions"] and json.loads((tmp_path / "seed" / "config.json").read_text())["train"]["seed"] == 0


def test_evaluate_refuses_a_cache_of_other_videos(trained, tiny, tmp_path):
    out, report = trained
    again = evaluate_run(out, cache=tiny / "cache", device="cpu")
    assert again["video_accuracy"] == pytest.approx(report["video_accuracy"])
    other = tmp_path / "other_cache"
    shutil.copytree(tiny / "cache", other)
    test_path = json.loads((out / "split.json").read_text())["test"][0]["path"]
    videos = (other / "videos.csv").read_text()
    (other / "videos.csv").write_text(videos.replace(test_path, "someone_else.mp4"))
    with pytest.raises(RunError, match="1 of the run's 6 test videos are not in this cache"):
        evaluate_run(out, cache=other, device="cpu")


def test_the_logged_loss_uses_lambda_at_each_step(tiny, tmp_path):
    """Under --lam-warmup the loss in metrics.csv is CE + λ_t·L_corr with λ_t of each step (it used
    the final λ): during the warm-up it lies between CE and CE + λ·L_corr, after it equals the latter."""
    report = train(TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "r"), corr="fg", lam=2.0, lam_warmup=2, epochs=1,
                               joint_epochs=3, **TINY), log=lambda *a: None)  # fmt: skip
    rows = [r for r in read_metrics(tmp_path / "r") if r["stage"] == "stage2"]
    ce, corr, loss = ([float(r[k]) for r in rows] for k in ("ce", "corr", "loss"))
    assert all(c < 0 for c in corr)  # the features correlate: L_corr < 0, so λ matters
    assert ce[0] + 2.0 * corr[0] + 1e-3 < loss[0] < ce[0] - 1e-3  # λ_t rose from 0 to 1 over epoch 1: about ce + 0.5·corr
    assert loss[2] == pytest.approx(ce[2] + 2.0 * corr[2], abs=2e-5)  # the warm-up is over
    assert report["stages"]["stage2"]["epochs"] == 3


def test_a_kill_between_the_best_weights_and_the_resume_state_resumes_like_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """The best weights of an epoch are written before its resume state. Killed in between (at
    stage 2's second epoch, a new best), the resume redoes that epoch from the state before; the
    best weights on disk carry their own epoch and accuracy, so they are never taken for the
    earlier best, and the run ends as an uninterrupted one does."""
    import itertools

    from avhgr.runs import RunFolder

    def rising_validation():  # every epoch a new best
        count = itertools.count(1)
        monkeypatch.setattr(avhgr.train.Session, "validate", lambda self, model: {"video_accuracy": 0.01 * next(count), "window_accuracy": 0.5})

    kw = dict(cache=str(tiny / "cache"), epochs=1, joint_epochs=2, **TINY)
    rising_validation()
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **kw), log=lambda *a: None)

    class Killed(Exception):
        pass

    real_state = RunFolder.save_state

    def save_state(self, stage, state):
        if stage == "stage2" and state["epoch"] == 2:
            raise Killed  # epoch 2's best weights are written, its state is not
        real_state(self, stage, state)

    rising_validation()
    monkeypatch.setattr(RunFolder, "save_state", save_state)
    with pytest.raises(Killed):
        train(TrainConfig(out=str(tmp_path / "cut"), **kw), log=lambda *a: None)
    assert load_state(tmp_path / "cut" / "stage2.resume.pt")["epoch"] == 1  # the state is epoch 1's, the best weights epoch 2's
    monkeypatch.setattr(RunFolder, "save_state", real_state)
    rising_validation()  # the resumed run's validation starts low: epoch 2 done again is not better than what is on disk
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, log=lambda *a: None)
    assert resumed["stages"]["stage2"]["best_epoch"] == whole["stages"]["stage2"]["best_epoch"] == 2
    assert resumed["predictions"] == whole["predictions"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert [r["loss"] for r in read_metrics(tmp_path / "cut")] == [r["loss"] for r in read_metrics(tmp_path / "whole")]
