"""The Soft-HGR correlation objective and the paper's correlation losses.

Soft-HGR (Wang et al. 2019) for two feature batches u, v of shape (n, k):

    H(u, v) = 1/(n-1) * sum_i ũ_i·ṽ_i  -  1/2 * tr(Σ_u Σ_v)

with ũ = u - mean(u) and Σ_u = ũᵀũ / (n-1). It is maximised; its supremum over
feature functions with k outputs is ½ Σ σ_i², the squared HGR maximal correlations.
No matrix inverse appears, so singular mini-batch covariances are harmless.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor


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


def correlation_loss(f: Tensor, g: Tensor, h: Tensor | None = None, labeled: Tensor | None = None) -> Tensor:
    """The paper's correlation loss, to be minimised.

    Without h: L_fg = -H(f, g). With h: L_fgh = -[H(f, g) + H(f, h) + H(g, h)].
    ``labeled`` (bool, length n) marks the rows whose label is known: H(f, g) uses every
    row, the two h terms only the labelled ones, and they are 0 when fewer than two rows
    are labelled (the semi-supervised setting of method.md).
    """
    total = soft_hgr(f, g)
    if h is None:
        return -total
    if labeled is not None:
        if labeled.shape != (f.shape[0],):
            raise ValueError(f"labeled mask must have shape ({f.shape[0]},), got {tuple(labeled.shape)}")
        return -(total + soft_hgr(f, h, labeled) + soft_hgr(g, h, labeled))
    return -(total + soft_hgr(f, h) + soft_hgr(g, h))
