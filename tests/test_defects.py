"""Defects a cold reading found, each with the test that failed before its fix: the GPU of each
process set before the first collective, collectives with facial features, feature tables that
match nothing or the wrong file, label columns as features, a user's malformed table, part files of
the previous version, a stale lock taken over twice, settings that do nothing, one precision rule,
and the baseline's very warm-up in every paired method."""

import csv
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from avhgr import distributed
from avhgr.config import STAGE1_SETTINGS, TrainConfig, upgrade
from avhgr.errors import RunError
from avhgr.synth import tone, write_media
from avhgr.visual_features import FeatureTableError, open_table

from test_ddp import _env, free_port

TINY = dict(backbone="resnet18", batch_size=16, lr=1e-3, device="cpu")


# ------------------------------------------------------------------ 1. the GPU before the first collective


def test_each_process_takes_its_gpu_before_joining_the_group(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    info = distributed.setup("cuda")
    assert calls == [("set_device", 1), ("init", "nccl")] and info.local_rank == 1  # the device first: NCCL's tensors go there
    calls.clear()
    distributed.setup("cpu")
    assert calls == [("init", "gloo")]  # no GPU on the CPU


# ------------------------------------------------------------------ 2. DDP with facial features, a rank without visual rows


def _features_worker(rank, world, port, out):
    from avhgr.data import Batch, Rows
    from avhgr.distributed import GlobalBatchNorm
    from avhgr.losses import joint_objective
    from avhgr.models import AVHGRModel

    _env(rank, world, port)
    info = distributed.setup("cpu")
    torch.manual_seed(0)
    model = GlobalBatchNorm.convert(AVHGRModel(3, "resnet18", 1, feature_norm="batch", feature_dim=5)).train()
    model.freeze_unused("fg")
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    gen = torch.Generator().manual_seed(1)
    n = 4
    visual, audio = torch.randn(2 * n, 5, generator=gen), torch.randn(2 * n, 1, 64, 64, generator=gen)
    labels = torch.randint(0, 3, (2 * n,), generator=gen)
    rows = slice(rank * n, (rank + 1) * n)
    has_visual = torch.tensor([rank == 0] * n)  # rank 1's slice has no visual row at all
    batch = Batch(visual=visual[rows], audio=audio[rows], labels=labels[rows], video=torch.zeros(n, dtype=torch.long),
                  rows=Rows.of(has_visual, torch.ones(n, dtype=torch.bool)), rows_per_rank=(n, n))  # fmt: skip
    for _ in range(2):  # two steps: the collectives stay paired
        loss, _, _ = joint_objective(ddp(batch), batch, "fg", 1.0, False, info, standardize_h=True)
        loss.backward()
    Path(out, f"rank{rank}.ok").write_text("done")
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_with_facial_features_and_a_rank_without_visual_rows(tmp_path):
    """The MLP over features has no BatchNorm, but the feature normalisation after it is a global
    one: the rank with no visual rows must still run it, or the other waits (a hang, or SIGABRT)."""
    mp.start_processes(_features_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["rank0.ok", "rank1.ok"]


# ------------------------------------------------------------------ 3-5. feature tables


def _openface(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", " timestamp", " confidence", " success", " AU01_r", " AU12_r"])
        for i in range(10):
            w.writerow([i + 1, f"{i / 10:.1f}", 0.9, 1, value, value])


def test_openface_csvs_match_by_path_and_two_videos_of_one_name_are_refused(tmp_path):
    nested = tmp_path / "nested"
    _openface(nested / "happy" / "001.csv", 1.0)
    _openface(nested / "sad" / "001.csv", 2.0)
    table = open_table(nested)
    happy = table.windows(tmp_path / "data" / "happy" / "001.mp4", "happy/001.mp4", np.array([0.0]), 0.5)[0]
    sad = table.windows(tmp_path / "data" / "sad" / "001.mp4", "sad/001.mp4", np.array([0.0]), 0.5)[0]
    assert happy[0, 0] == 1.0 and sad[0, 0] == 2.0  # each video its own CSV, not the first of that name
    flat = tmp_path / "flat"
    _openface(flat / "001.csv", 1.0)
    files = [(tmp_path / "data" / "happy" / "001.mp4", "happy/001.mp4"), (tmp_path / "data" / "sad" / "001.mp4", "sad/001.mp4")]
    with pytest.raises(FeatureTableError, match="one OpenFace CSV for 2 videos"):
        open_table(flat).match_report(files)


def test_predict_takes_the_longest_matching_row_and_refuses_a_tie(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,AU01_r\ntake.wav,1\nActor_02/take.wav,2\n")
    table = open_table(path, match="end")
    assert table.row(Path("/x/Actor_02/take.wav"))[0] == 2.0  # the longer, more specific row
    assert table.row(Path("/x/Actor_05/take.wav"))[0] == 1.0
    tie = tmp_path / "tie.csv"
    tie.write_text("file,AU01_r\na/take.wav,1\nb/take.wav,2\n")
    assert open_table(tie, match="end").row(Path("/x/a/take.wav"))[0] == 1.0
    tie.write_text("file,AU01_r\nx/take.wav,1\n./x/take.wav,2\n")  # two rows of one length that one path ends in
    with pytest.raises(FeatureTableError, match="line 3: x/take.wav appears twice"):
        open_table(tie, match="end")


def test_a_table_keyed_to_another_root_is_refused_and_the_match_rate_reported(tmp_path):
    from avhgr.datasets import Video
    from avhgr.features import FeatureSettings
    from avhgr.preprocess import run_preprocess

    root = tmp_path / "speech"
    videos = []
    for i in range(4):
        p = write_media(root / f"take{i}.wav", audio=tone(0.8, 16_000, 200 + 30 * i), sample_rate=16_000)
        videos.append(Video(p, ("happiness", "sadness")[i % 2], f"s{i}"))
    table = tmp_path / "au.csv"
    table.write_text("file,AU01_r\n" + "".join(f"elsewhere/take{i}.wav,{i}\n" for i in range(4)) + "take0.wav,9\n")
    settings = FeatureSettings(windows=2)
    with pytest.raises(FeatureTableError, match=r"names 1 of the 4 recordings \(25 %.*--allow-partial-features"):
        run_preprocess(videos, ["happiness", "sadness"], tmp_path / "c", settings, root, "folder", progress=False, features=open_table(table))
    report = run_preprocess(videos, ["happiness", "sadness"], tmp_path / "c", settings, root, "folder", progress=False,
                            features=open_table(table, allow_partial=True))  # fmt: skip
    assert report["visual_features_matched"] == {"recordings": 1, "of": 4}
    on_disk = json.loads((tmp_path / "c" / "report.json").read_text())  # where a user looks later: it was only returned
    assert on_disk["visual_features_matched"] == {"recordings": 1, "of": 4}


def test_only_action_units_or_named_columns_and_never_a_label(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,emotion,actor,AU01_r,AU12_c,pose_Rx\na.wav,3,1,0.5,1,0.1\n")
    assert open_table(path).columns == ["AU01_r", "AU12_c"]  # the numeric emotion and actor columns are not features
    assert open_table(path, columns=["AU01_r", "pose_Rx"]).columns == ["AU01_r", "pose_Rx"]
    with pytest.raises(FeatureTableError, match="column emotion names a label"):
        open_table(path, columns=["AU01_r", "emotion"])
    with pytest.raises(FeatureTableError, match="no column AU99_r"):
        open_table(path, columns=["AU99_r"])


def test_a_malformed_openface_csv_is_the_users_file_not_a_bug(tmp_path):
    from avhgr.cache import part_paths
    from avhgr.datasets import Video
    from avhgr.features import FeatureSettings
    from avhgr.preprocess import run_preprocess

    folder = tmp_path / "openface"
    _openface(folder / "good.csv", 1.0)
    (folder / "bad.csv").write_text("frame, timestamp, confidence, success, AU01_r, AU12_r\n1,0.0,0.9,1,oops,1\n")
    root = tmp_path / "videos"
    videos = [Video(write_media(root / f"{n}.wav", audio=tone(0.8, 16_000, 220), sample_rate=16_000), "happiness", n) for n in ("good", "bad")]
    report = run_preprocess(videos, ["happiness"], tmp_path / "c", FeatureSettings(windows=2), root, "folder", progress=False,
                            features=open_table(folder))  # fmt: skip
    (failed,) = report["failed"]
    assert "bad.csv" in failed["reason"] and "not a number" in failed["reason"] and "internal error" not in failed["reason"]
    assert not (tmp_path / "c" / "errors.log").exists()  # no traceback: not a bug


# ------------------------------------------------------------------ 6-7. the cache


def test_a_cache_interrupted_under_the_previous_version_consolidates(tmp_path):
    from avhgr.cache import consolidate, part_paths, prepare_cache_dir, write_part
    from avhgr.datasets import Video
    from avhgr.features import FeatureSettings

    settings = {"version": 1, "dataset": "folder", "classes": ["happiness"], "features": FeatureSettings(windows=2, face_size=8).as_dict()}
    videos = [Video(Path("a.mp4"), "happiness", "s")]
    prepare_cache_dir(tmp_path, settings, videos, overwrite=False)
    part = {"starts": np.array([0.0, 0.5]), "key_times": np.array([0.25, 0.75]), "faces": np.zeros((2, 8, 8, 3), np.uint8),
            "face_found": np.array([True, False]), "specs": np.zeros((2, 94, 94), np.float16),
            "meta": {"duration": 1.0, "has_audio": True, "has_video": True, "rel_path": "a.mp4"}}  # fmt: skip
    write_part(tmp_path, 0, part)  # the key of the version before: "faces"
    report = consolidate(tmp_path, videos, ["happiness"], settings, 0.0)
    assert report["windows_with_video"] == 2 and np.load(tmp_path / "faces.npy").shape == (2, 8, 8, 3)


def test_two_processes_taking_over_one_stale_lock_do_not_both_hold_it(tmp_path, monkeypatch):
    from avhgr.cache import ConsolidationLock

    lock_path = tmp_path / "consolidating.lock"
    lock_path.write_text(f"{os.uname().nodename}:999999999")  # a dead holder on this machine
    real = ConsolidationLock._holder_is_dead

    def slow(self):  # both look, see it dead, then act: the race
        dead = real(self)
        time.sleep(0.3)
        return dead

    monkeypatch.setattr(ConsolidationLock, "_holder_is_dead", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ConsolidationLock(tmp_path).acquire(steal=True))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True] and lock_path.exists()


# ------------------------------------------------------------------ 8. settings that would do nothing


def test_settings_that_would_do_nothing_are_refused(tiny):
    cache = str(tiny / "cache")
    for kw, word in ((dict(modalities=("audio",), lam=0.1), "--lam"), (dict(modalities=("audio",), corr="fg"), "--corr"),
                     (dict(modalities=("visual",), modality_dropout=0.2), "--modality-dropout"),
                     (dict(feature_noise=0.5), "--feature-noise"), (dict(corr="none", lam=0.5), "--lam"),
                     (dict(modalities=("visual",), spec_augment=True), "--spec-augment"),
                     (dict(modalities=("audio",), joint_lr=1e-4), "--joint-lr"), (dict(modalities=("visual",), level="window"), "--level"),
                     (dict(fusion="product", joint_lr=1e-4), "--joint-lr"), (dict(fusion="product", modality_dropout=0.2), "--modality-dropout"),
                     (dict(audio_weight=0.7), "--audio-weight"), (dict(modalities=("visual",), fusion="network"), "--fusion")):  # fmt: skip
        with pytest.raises(RunError, match=f"{word} would do nothing here"):
            TrainConfig(cache=cache, out="o", **kw)
    TrainConfig(cache=cache, out="o", corr="fg", lam=0.1, modality_dropout=0.2, joint_lr=1e-4, level="window")  # a joint run: all of them act
    TrainConfig(cache=cache, out="o", fusion="product", audio_weight=0.7, level="window")  # the product: its weight acts


# ------------------------------------------------------------------ 9. one precision rule


def test_one_precision_rule_recorded_in_the_run(monkeypatch):
    from avhgr import precision

    assert "amp" in STAGE1_SETTINGS  # a stage 1 trained in another precision is another stage 1
    assert upgrade({"amp": None, "device": "cpu", "epochs": 3})["amp"] is False  # before the rule: bf16 on CUDA only
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert precision.inference_amp(True, cpu) is False and precision.default_amp(cpu) is False
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.inference_amp(True, cpu) is True and precision.inference_amp(False, cpu) is False
    assert TrainConfig(cache="c", out="o", device="cpu").amp is True  # the same rule resolves the training default


def test_a_figure_names_the_cpu_it_was_measured_on(monkeypatch):
    from avhgr import precision

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    said = precision.describe_machine("cpu")
    assert said == f"the CPU ({os.cpu_count()}-core {names[0]})" if names else said.startswith(f"the CPU ({os.cpu_count()}-core ")
    monkeypatch.setattr(precision, "Path", lambda p: (_ for _ in ()).throw(OSError(p)))  # no /proc/cpuinfo: the platform's name
    assert precision.describe_machine("cpu").startswith(f"the CPU ({os.cpu_count()}-core ")


# ------------------------------------------------------------------ 10. the baseline's warm-up, taken


def test_every_paired_method_takes_the_baselines_very_warm_up(tiny, tmp_path, monkeypatch):
    from avhgr import train as train_module
    from avhgr.runs import weights_digest
    from avhgr.train import train

    kw = dict(cache=str(tiny / "cache"), epochs=1, joint_epochs=1, **TINY)
    base = train(TrainConfig(out=str(tmp_path / "base"), corr="none", **kw), log=lambda *a: None)
    fitted = []
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda s, run, stage, *a, **k: fitted.append(stage.name) or real_fit(s, run, stage, *a, **k))
    fg = train(TrainConfig(out=str(tmp_path / "fg"), corr="fg", init_from=str(tmp_path / "base"), **kw), log=lambda *a: None)
    assert fitted == ["stage2"]  # no warm-up trained again
    assert weights_digest(tmp_path / "fg" / "stage2_warmup.safetensors") == weights_digest(tmp_path / "base" / "stage2_warmup.safetensors")
    assert fg["stages"]["stage2_warmup"]["from"] == str(tmp_path / "base")
    config = json.loads((tmp_path / "fg" / "config.json").read_text())
    assert config["init_weights"]["stage2_warmup"] == weights_digest(tmp_path / "base" / "stage2_warmup.safetensors")  # digest-checked
    fitted.clear()
    other = train(TrainConfig(out=str(tmp_path / "fg1"), corr="fg", fusion_layers=1, init_from=str(tmp_path / "base"), **kw), log=lambda *a: None)
    assert fitted == ["stage2_warmup", "stage2"] and "from" not in other["stages"]["stage2_warmup"]  # another depth: its own warm-up
    assert base["stages"]["stage2_warmup"]["epochs"] == 1
