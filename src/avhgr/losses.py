"""The Soft-HGR correlation objective and the paper's correlation losses.

Soft-HGR (Wang et al. 2019) for two feature batches u, v of shape (n, k):

    H(u, v) = 1/(n-1) * sum_i ũ_i·ṽ_i  -  1/2 * tr(Σ_u Σ_v)

with ũ = u - mean(u) and Σ_u = ũᵀũ / (n-1). It is maximised; its supremum over
feature functions with k outputs is ½ Σ σ_i², the squared HGR maximal correlations.
No matrix inverse appears, so singular mini-batch covariances are harmless.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_hgr(u: Tensor, v: Tensor) -> Tensor:
    """Soft-HGR objective of two (n, k) batches: a 0-dim float32 tensor to maximise."""
    if u.dim() != 2 or v.dim() != 2:
        raise ValueError(f"soft_hgr expects two 2-D (n, k) batches, got shapes {tuple(u.shape)} and {tuple(v.shape)}")
    if u.shape != v.shape:
        raise ValueError(f"soft_hgr needs batches of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    n = u.shape[0]
    if n < 2:
        raise ValueError(f"soft_hgr needs at least 2 rows to centre over the batch, got n={n}")
    # The statistics are small sums of products: keep them in float32 even under autocast.
    with torch.autocast(device_type=u.device.type, enabled=False):
        u = u.float()
        v = v.float()
        u = u - u.mean(dim=0, keepdim=True)
        v = v - v.mean(dim=0, keepdim=True)
        inner = (u * v).sum() / (n - 1)
        cov_u = u.T @ u / (n - 1)
        cov_v = v.T @ v / (n - 1)
        # tr(Σ_u Σ_v) for symmetric matrices is the sum of their element-wise product.
        trace = (cov_u * cov_v).sum()
        return inner - 0.5 * trace


def correlation_loss(f: Tensor, g: Tensor, h: Tensor | None = None, labeled: Tensor | None = None) -> Tensor:
    """The paper's correlation loss, to be minimised.

    Without h: L_fg = -H(f, g). With h: L_fgh = -[H(f, g) + H(f, h) + H(g, h)].
    ``labeled`` (bool, length n) marks the rows whose label is known: H(f, g) uses every
    row, the two h terms only the labelled ones, and they are dropped when fewer than two
    rows are labelled (the semi-supervised setting of method.md).
    """
    total = soft_hgr(f, g)
    if h is None:
        return -total
    if labeled is not None:
        labeled = labeled.to(device=f.device, dtype=torch.bool)
        if labeled.shape != (f.shape[0],):
            raise ValueError(f"labeled mask must have shape ({f.shape[0]},), got {tuple(labeled.shape)}")
        if int(labeled.sum()) < 2:
            return -total
        f, g, h = f[labeled], g[labeled], h[labeled]
    return -(total + soft_hgr(f, h) + soft_hgr(g, h))
