"""DDP with two CPU processes (gloo): the global-batch Soft-HGR and the gradients equal one
process holding the whole batch, also when the batch does not split evenly, for a toy model and
for the real joint model's training step (BatchNorm over the global batch, standardised
features, rows without an input, semi-supervised labels, augmentation); only rank 0 writes."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from avhgr.data import Batch, Rows
from avhgr.distributed import DistInfo, setup
from avhgr.losses import joint_objective
from avhgr.models import Output
from avhgr.train import TrainConfig, train_run

class Toy(nn.Module):
    """The joint model's shape without BatchNorm: visual/audio features, label net, fusion."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual, self.audio, self.label = nn.Linear(8, 5), nn.Linear(6, 5), nn.Linear(3, 5)
        self.fusion = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))

    def forward(self, xv, xa, y):
        f, g = self.visual(xv), self.audio(xa)
        h = self.label(nn.functional.one_hot(y, 3).float())
        return self.fusion(torch.cat([f, g], 1)), f, g, h


def global_batch(b):
    gen = torch.Generator().manual_seed(1)
    xv, xa = torch.randn(b, 8, generator=gen), torch.randn(b, 6, generator=gen)
    y = torch.randint(0, 3, (b,), generator=gen)
    labeled = torch.tensor([True, False, True, True, False, True, True, True, False, True, True, False, True])[:b]
    return xv, xa, y, labeled


def step(model, info, rows, b, rows_per_rank=None):
    xv, xa, y, labeled = (t[rows] for t in global_batch(b))
    logits, f, g, h = model(xv, xa, y)
    every = torch.ones(len(y), dtype=torch.bool)
    batch = Batch(visual=None, audio=None, labels=y, video=torch.zeros(len(y), dtype=torch.long), rows=Rows.of(every, every, labeled),
                  rows_per_rank=rows_per_rank)  # fmt: skip
    loss, ce, corr = joint_objective(Output(logits, f, g, h), batch, corr="fgh", lam=0.7, semi=True, info=info)
    loss.backward()
    return corr.item(), ce


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))


def _grad_worker(rank, world, port, out, b):
    _env(rank, world, port)
    info = setup("cpu")
    model = nn.parallel.DistributedDataParallel(Toy())
    parts = np.array_split(np.arange(b), world)
    corr, ce = step(model, info, torch.from_numpy(parts[rank]), b, tuple(len(p) for p in parts))
    ce_total = torch.distributed.nn.functional.all_reduce(ce.detach().clone())
    torch.save({"corr": corr, "ce": float(ce_total), "grads": {k: p.grad for k, p in model.module.named_parameters()}}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("b", [12, 13])  # 13 rows: 7 on one process, 6 on the other
def test_global_batch_soft_hgr_and_gradients_match_one_process(tmp_path, b):
    single = Toy()
    corr, ce = step(single, DistInfo(), torch.arange(b), b)
    mp.spawn(_grad_worker, args=(2, free_port(), str(tmp_path), b), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(got["corr"] - corr) < 1e-5  # the Soft-HGR value of the whole batch, on every rank
        assert abs(got["ce"] - ce.item()) < 1e-5
        for name, p in single.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def _train_worker(rank, world, port, cfg):
    _env(rank, world, port)
    train_run(cfg, log=lambda *a: None)
    torch.distributed.destroy_process_group()


def test_ddp_training_runs_and_only_rank0_writes(tiny, tmp_path):
    out = tmp_path / "ddp"
    # batch 15: every step splits 8 / 7 between the two processes
    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=1, joint_epochs=1, backbone="resnet18", batch_size=15, device="cpu")
    mp.spawn(_train_worker, args=(2, free_port(), cfg), nprocs=2, join=True)
    assert (out / "report.json").exists() and (out / "model.safetensors").exists()
    assert len(list((out / "tb").glob("events*"))) == 1  # a second writer would add its own file
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header + one epoch of each stage (stage 1 twice, the warm-up, stage 2), written once
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def real_global_batch(b=14):
    """The joint model's inputs: 32 px faces, 32 x 32 spectrograms, rows without a face or without
    speech, half the labels known."""
    gen = torch.Generator().manual_seed(3)
    faces = torch.randint(0, 256, (b, 32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
    specs = (torch.randn(b, 32, 32, generator=gen) * 10 - 30).numpy()
    visual = np.array([True] * b)
    visual[[2, 9]] = False
    audio = np.array([True] * b)
    audio[[5]] = False
    labels = (np.arange(b) * 5) % 6
    return faces, specs, visual, audio, labels, np.arange(b) % 2 == 0


def _real_step(rank, world, port, out, b):
    from types import SimpleNamespace

    from avhgr.data import host_batch
    from avhgr.distributed import GlobalBatchNorm
    from avhgr.models import AVHGRModel
    from avhgr.train import Stage, train_step

    info = DistInfo()
    if world > 1:
        _env(rank, world, port)
        info = setup("cpu")
    torch.manual_seed(0)
    model = AVHGRModel(6, "resnet18", feature_norm="batch")
    model.freeze_unused("fgh")
    train_model = model
    parts = np.array_split(np.arange(b), world)
    rows = parts[rank]
    if world > 1:
        model = GlobalBatchNorm.convert(model)
        train_model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    faces, specs, visual, audio, labels, labeled = (x[rows] for x in real_global_batch(b))
    batch = host_batch(faces, specs, visual, audio, (-30.0, 10.0), labels=labels, labeled=labeled).to("cpu")
    batch.rows_per_rank = tuple(len(p) for p in parts)
    cfg = TrainConfig(cache="c", out="o", labeled_fraction=0.5, amp=False)  # the default recipe: augmentation, standardised f, g, h
    session = SimpleNamespace(device=torch.device("cpu"), amp=False, cfg=cfg, dist=info)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # the gradients stay to compare
    torch.manual_seed(5)  # the same augmentation draws on every process
    losses = train_step(session, Stage("stage2", model, [], 1, 10, corr="fgh"), train_model, opt, batch, lam=0.7)
    losses = all_sum_if(losses, info)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    torch.save({"losses": losses, "grads": grads, "stats": stats}, f"{out}/real{world}_rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def all_sum_if(x, info):
    from avhgr.distributed import all_sum

    return all_sum(x, info)


def test_real_joint_step_on_two_processes_equals_one(tmp_path):
    """What the README promises, "results do not change with the number of processes", for the
    real model's step: the loss, every gradient and the BatchNorm statistics of two gloo processes
    holding 7 rows each equal one process holding all 14."""
    b = 14
    _real_step(0, 1, None, str(tmp_path), b)
    mp.spawn(_real_step, args=(2, free_port(), str(tmp_path), b), nprocs=2, join=True)
    one = torch.load(tmp_path / "real1_rank0.pt", weights_only=True)
    assert len(one["grads"]) > 100 and all(g.abs().sum() > 0 for k, g in one["grads"].items() if "fusion" in k)
    for rank in (0, 1):
        two = torch.load(tmp_path / f"real2_rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-4, atol=1e-5)
        assert two["grads"].keys() == one["grads"].keys()
        for name, g in one["grads"].items():
            torch.testing.assert_close(two["grads"][name], g, rtol=2e-3, atol=2e-5, msg=name)
        for name, s in one["stats"].items():
            torch.testing.assert_close(two["stats"][name], s, rtol=1e-4, atol=1e-5, msg=name)


class Killed(Exception):
    pass


def _node_worker(rank, world, port, cfgs, kill_at, resume):
    """One "node": its own run folder and its own copy of the cache (no disk shared with the other)."""
    _env(rank, world, port)

    def log(msg):
        if kill_at and msg.startswith(kill_at):
            raise Killed(msg)

    train_run(cfgs[rank], resume=resume, log=log)
    torch.distributed.destroy_process_group()


def test_two_nodes_without_a_shared_disk_train_resume_and_start_from_a_stage1(tiny, tmp_path):
    """Rank 1 sees none of rank 0's files: its run folder, and the run it starts from, are empty
    paths of its own. Whatever it needs (resume states, best weights, a stage 1) comes from rank 0."""
    import shutil
    from dataclasses import replace

    shutil.copytree(tiny / "cache", tmp_path / "node1" / "cache")
    base = TrainConfig(cache=str(tiny / "cache"), out=str(tmp_path / "node0" / "whole"), epochs=1, joint_epochs=2, backbone="resnet18",
                       batch_size=15, device="cpu", keep_states=False)  # fmt: skip

    def per_node(cfg):
        mine = cfg
        theirs = replace(cfg, cache=str(tmp_path / "node1" / "cache"), out=cfg.out.replace("node0", "node1"),
                         init_from=cfg.init_from.replace("node0", "node1") if cfg.init_from else None)  # fmt: skip
        return [mine, theirs]

    mp.spawn(_node_worker, args=(2, free_port(), per_node(base), None, False), nprocs=2, join=True)
    whole = tmp_path / "node0" / "whole"
    assert (whole / "report.json").exists() and not (tmp_path / "node1" / "whole").exists()  # rank 1 wrote nothing, read nothing
    cut = replace(base, out=str(tmp_path / "node0" / "cut"))
    with pytest.raises(Exception, match="Killed"):
        mp.spawn(_node_worker, args=(2, free_port(), per_node(cut), "stage2 epoch 1/", False), nprocs=2, join=True)
    assert (tmp_path / "node0" / "cut" / "stage2.resume.pt").exists() and not (tmp_path / "node0" / "cut" / "report.json").exists()
    mp.spawn(_node_worker, args=(2, free_port(), per_node(cut), None, True), nprocs=2, join=True)
    assert (tmp_path / "node0" / "cut" / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    child = replace(base, out=str(tmp_path / "node0" / "fg"), corr="fg", init_from=str(whole))
    mp.spawn(_node_worker, args=(2, free_port(), per_node(child), None, False), nprocs=2, join=True)
    assert (tmp_path / "node0" / "fg" / "report.json").exists() and not (tmp_path / "node1").joinpath("fg").exists()
    assert sorted(p.name for p in (tmp_path / "node1").iterdir()) == ["cache"]
