"""Multi-GPU and multi-node training through torchrun (DDP).

    torchrun --nproc-per-node 8 -m avhgr train --cache C --out RUN ...

Each process takes an equal slice of every global batch (the same shuffled order on every
rank). The Soft-HGR statistics must be those of the *global* batch, so the features are
gathered across ranks with their gradients before the correlation loss; with the scaling in
``train.joint_objective`` the gradients DDP averages are exactly those of one process with the
whole batch. On CUDA, BatchNorm becomes torch's SyncBatchNorm (global batch statistics); on
the CPU (gloo), where that does not run, our ``GlobalBatchNorm``, the same computation written
out: so one process and several compute the same step (tested on the CPU).

Only rank 0 writes files, and only rank 0 reads what a run wrote (resume states, best weights, a
stage 1 to start from): it broadcasts them, so the nodes of a multi-node run need no shared disk,
only each its own copy of the cache.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import RunError

# torch.distributed.nn.functional (collectives that carry gradients) is marked deprecated in favour
# of private functional collectives; it is the public API that works on gloo and NCCL alike.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (nothing when run alone). On
    CUDA the process's GPU (``LOCAL_RANK``) is made its current device first, before any
    collective: NCCL puts a collective's tensors on the current device, and two ranks on one GPU
    are refused or hang."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def gather_rows(x: torch.Tensor, info: DistInfo, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Concatenate every rank's rows, in rank order, keeping the gradient path to local rows.

    ``sizes``: each rank's number of rows, where they differ (a global batch of 90 rows on 4
    GPUs is 23, 23, 22, 22). Every rank knows them from the batch split, so no exchange (and
    no host sync) is needed: the shorter slices are padded to the longest for the exchange,
    and the padding is cut away again.
    """
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    if sizes is None or len(set(sizes)) == 1:
        return torch.cat(all_gather(x.contiguous()), dim=0)
    if len(sizes) != info.world or sizes[info.rank] != x.shape[0]:
        raise ValueError(f"rank {info.rank} holds {x.shape[0]} rows, but the split says {sizes}")
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])]) if x.shape[0] < longest else x
    parts = all_gather(padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def all_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast(value, info: DistInfo):
    """Rank 0's Python value, on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise RunError(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)") from exc


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over every process: what
    torch's SyncBatchNorm computes on GPUs, for the CPU (gloo). The per-channel sums travel in one
    all-reduce that carries gradients, so the backward pass is that of one process holding the
    whole batch. Evaluation uses the running statistics, as BatchNorm does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (rows, channels, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = xf.new_full((1,), xf.numel() / c)
        totals = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = totals[-1]
        mean = totals[:c] / n.clamp(min=1)
        var = (totals[c : 2 * c] / n.clamp(min=1) - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every BatchNorm replaced by a GlobalBatchNorm holding its parameters and
        statistics (as ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (cls, nn.SyncBatchNorm)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out


def is_collective(module: nn.Module) -> bool:
    """Whether ``module`` (or a part of it) must run on every process at once in training: a
    BatchNorm over the global batch."""
    return any(isinstance(m, (nn.SyncBatchNorm, GlobalBatchNorm)) for m in module.modules())
