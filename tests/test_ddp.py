"""DDP with two CPU processes (gloo): the global-batch Soft-HGR and the gradients equal one
process holding the whole batch, also when the batch does not split evenly; only rank 0
writes."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from avhgr.distributed import DistInfo, setup
from avhgr.losses import joint_objective
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
    loss, ce, corr = joint_objective(logits, y, labeled, f, g, h, corr="fgh", lam=0.7, semi=True, info=info, rows_per_rank=rows_per_rank)
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
    cfg = TrainConfig(cache=str(tiny / "cache"), out=str(out), epochs=1, pretrain_epochs=1, backbone="resnet18", batch_size=15, device="cpu")
    mp.spawn(_train_worker, args=(2, free_port(), cfg), nprocs=2, join=True)
    assert (out / "report.json").exists() and (out / "model.safetensors").exists()
    assert len(list((out / "tb").glob("events*"))) == 1  # a second writer would add its own file
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header + one epoch of each stage, written once
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
