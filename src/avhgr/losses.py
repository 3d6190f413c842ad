"""The Soft-HGR correlation objective and the paper's correlation losses.

Soft-HGR (Wang et al. 2019) for two feature batches u, v of shape (n, k):

    H(u, v) = 1/(n-1) * sum_i ũ_i·ṽ_i  -  1/2 * tr(Σ_u Σ_v)

with ũ = u - mean(u) and Σ_u = ũᵀũ / (n-1). It is maximised; its supremum over
feature functions with k outputs is ½ Σ σ_i², the squared HGR maximal correlations.
No matrix inverse appears, so singular mini-batch covariances are harmless.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import DistInfo, all_sum, gather_rows

if TYPE_CHECKING:
    from .data import Batch
    from .models import Output


def soft_hgr(u: Tensor, v: Tensor, weight: Tensor | None = None) -> Tensor:
    """Soft-HGR objective of two (n, k) batches: a 0-dim float32 tensor to maximise.

    ``weight`` (n,) of 0/1 restricts it to the rows marked 1, exactly as if the others were
    removed, but by masking instead of indexing: the number of rows stays a device value and
    the step never waits for the GPU. Fewer than two marked rows give 0 (no correlation to
    measure) with zero gradients.
    """
    if u.dim() != 2 or v.dim() != 2:
        raise ValueError(f"soft_hgr expects two 2-D (n, k) batches, got shapes {tuple(u.shape)} and {tuple(v.shape)}")
    if u.shape != v.shape:
        raise ValueError(f"soft_hgr needs batches of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    n = u.shape[0]
    if n < 2:
        raise ValueError(f"soft_hgr needs at least 2 rows to centre over the batch, got n={n}")
    if weight is not None and weight.shape != (n,):
        raise ValueError(f"soft_hgr weight must have shape ({n},), got {tuple(weight.shape)}")
    # The statistics are small sums of products: keep them in float32 even under autocast.
    with _no_autocast(u.device.type):
        u = u.float()
        v = v.float()
        if weight is None:
            u = u - u.mean(dim=0, keepdim=True)
            v = v - v.mean(dim=0, keepdim=True)
            dof = n - 1
        else:
            w = weight.to(device=u.device, dtype=torch.float32)[:, None]
            m = w.sum()
            u = (u - (w * u).sum(0, keepdim=True) / m.clamp(min=1)) * w  # unmarked rows become 0
            v = (v - (w * v).sum(0, keepdim=True) / m.clamp(min=1)) * w
            dof = (m - 1).clamp(min=1)  # one marked row: it is its own mean, every term is 0
        inner = (u * v).sum() / dof
        cov_u = u.T @ u / dof
        cov_v = v.T @ v / dof
        # tr(Σ_u Σ_v) for symmetric matrices is the sum of their element-wise product.
        trace = (cov_u * cov_v).sum()
        return inner - 0.5 * trace


def _no_autocast(device_type: str):
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()  # a device without autocast (e.g. "meta") runs in its inputs' precision


def correlation_loss(f: Tensor, g: Tensor, h: Tensor | None = None, labeled: Tensor | None = None,
                     visual: Tensor | None = None, audio: Tensor | None = None) -> Tensor:  # fmt: skip
    """The paper's correlation loss, to be minimised.

    Without h: L_fg = -H(f, g). With h: L_fgh = -[H(f, g) + H(f, h) + H(g, h)].
    ``labeled`` (bool, length n) marks the rows whose label is known: H(f, g) uses every
    row, the two h terms only the labelled ones, and they are 0 when fewer than two rows
    are labelled (the semi-supervised setting of method.md). ``visual`` and ``audio`` (0/1,
    length n) mark the rows that have each input: a term uses only rows that have both of its
    features (a missing input's zero feature says nothing about what the two share).
    """
    n = f.shape[0]
    for name, mask in (("labeled", labeled), ("visual", visual), ("audio", audio)):
        if mask is not None and mask.shape != (n,):
            raise ValueError(f"{name} mask must have shape ({n},), got {tuple(mask.shape)}")
    total = soft_hgr(f, g, _rows(visual, audio))
    if h is None:
        return -total
    return -(total + soft_hgr(f, h, _rows(visual, labeled)) + soft_hgr(g, h, _rows(audio, labeled)))


def _rows(*masks: Tensor | None) -> Tensor | None:
    """The rows all given masks mark, as 0/1 weights (None: every row)."""
    given = [m.float() for m in masks if m is not None]
    if not given:
        return None
    out = given[0]
    for m in given[1:]:
        out = out * m
    return out


def standardize(x: Tensor, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``x`` (n, k) standardised per dimension over the rows ``weight`` marks (all rows: None), as
    BatchNorm without affine parameters does, then divided by √k: unit total variance, so a
    Soft-HGR term of two such features over these same rows lies in [-1.5, 1] (times n/(n-1), as
    soft_hgr divides by n - 1); over a subset of them it is not bounded so. Unmarked rows come out 0."""
    with _no_autocast(x.device.type):
        x = x.float()
        w = torch.ones_like(x[:, :1]) if weight is None else weight.to(device=x.device, dtype=torch.float32)[:, None]
        m = w.sum().clamp(min=1)
        mean = (w * x).sum(0, keepdim=True) / m
        var = (w * (x - mean) ** 2).sum(0, keepdim=True) / m
        return (x - mean) * torch.rsqrt(var + eps) * w / x.shape[1] ** 0.5


def joint_objective(
    out: "Output",
    batch: "Batch",
    corr: str = "none",
    lam: float = 1.0,
    semi: bool = False,
    info: DistInfo = DistInfo(),
    standardize_h: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """CE over the labelled rows of ``batch`` + λ·L_corr over the global batch, from a model's
    output on it. Returns (loss to backpropagate, this rank's share of the mean CE, L_corr).

    Under DDP (``info.world`` > 1) each rank holds a slice of the batch: features are
    gathered with their gradients, so Soft-HGR sees the global batch, and the CE share is
    scaled by the world size, so that the gradients DDP averages equal those of one process
    holding the whole batch. With one process both steps do nothing. Each Soft-HGR term uses the
    rows that have both of its inputs (``batch.rows``), the h terms the labelled rows with
    ``semi``. ``standardize_h``: h standardised over the labelled rows of the global batch, as
    f and g are under ``--feature-norm batch``, so that the h terms are bounded too.
    """
    labeled = batch.rows.weight("labeled")
    per_row = F.cross_entropy(out.logits.float(), batch.labels, reduction="none") * labeled
    n_labeled = all_sum(labeled.sum(), info).clamp(min=1)  # no host sync
    ce_share = per_row.sum() / n_labeled
    loss = ce_share * info.world
    if corr == "none":
        return loss, ce_share, ce_share.new_zeros(())
    if out.f is None or out.g is None or (corr == "fgh" and out.h is None):
        raise ValueError(f"--corr {corr} needs the features f, g{', h' if corr == 'fgh' else ''} of a joint model")
    gather = lambda x: gather_rows(x, info, batch.rows_per_rank)  # noqa: E731
    rows = gather(batch.rows.device).detach()
    visual, audio = rows[:, 0], rows[:, 1]
    mask = rows[:, 2] if semi else None
    h = None
    if corr == "fgh":
        h = gather(out.h)
        h = standardize(h, mask) if standardize_h else h
    c = correlation_loss(gather(out.f), gather(out.g), h, labeled=mask, visual=visual, audio=audio)
    return loss + lam * c, ce_share, c
