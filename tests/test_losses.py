"""The Soft-HGR objective and the correlation losses, pinned to the formula and to HGR theory."""

import numpy as np
import pytest
import torch

from avhgr.losses import correlation_loss, soft_hgr


def soft_hgr_numpy(u: np.ndarray, v: np.ndarray) -> float:
    """method.md's formula, written out independently in float64."""
    n = u.shape[0]
    uc, vc = u - u.mean(0), v - v.mean(0)
    cov_u = uc.T @ uc / (n - 1)
    cov_v = vc.T @ vc / (n - 1)
    return float(np.einsum("ik,ik->", uc, vc) / (n - 1) - 0.5 * np.trace(cov_u @ cov_v))


@pytest.mark.parametrize("n,k", [(2, 1), (7, 3), (64, 16), (10, 40)])
def test_soft_hgr_matches_numpy_formula(n, k):
    rng = np.random.default_rng(n * 100 + k)
    u = rng.normal(size=(n, k)) * rng.uniform(0.5, 2, size=k) + rng.normal(size=k)
    v = 0.6 * u + rng.normal(size=(n, k))
    got = soft_hgr(torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32))
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(soft_hgr_numpy(u, v), rel=1e-4, abs=1e-5)


def test_soft_hgr_is_float32_under_autocast():
    u = torch.randn(16, 8, dtype=torch.bfloat16)
    v = torch.randn(16, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = soft_hgr(u, v)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(soft_hgr_numpy(u.float().numpy(), v.float().numpy()), rel=1e-4, abs=1e-5)


def test_gaussian_linear_optimum_is_rho_squared_over_two():
    # Jointly Gaussian scalars with correlation rho: over linear features f = a·x, g = b·y,
    # H = ab·rho - (ab)²/2, whose maximum is rho²/2 (method.md). Find it by gradient ascent.
    rho = 0.8
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 1, generator=gen)
    y = rho * x + (1 - rho**2) ** 0.5 * torch.randn(200_000, 1, generator=gen)
    assert soft_hgr(x, y).item() == pytest.approx(rho - 0.5, rel=0.02)  # identity features
    scale = torch.nn.Parameter(torch.tensor([0.3, 0.3]))
    opt = torch.optim.Adam([scale], lr=0.05)
    for _ in range(300):
        loss = -soft_hgr(scale[0] * x, scale[1] * y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert -loss.item() == pytest.approx(rho**2 / 2, rel=0.02)
    assert (scale[0] * scale[1]).item() == pytest.approx(rho, rel=0.05)


def test_gradient_ascent_reaches_half_sum_of_squared_hgr_correlations():
    """sup H(f(X), g(Y)) = ½ Σ_{i≥2} σ_i² of B = P(x,y)/sqrt(P(x)P(y)) (method.md)."""
    rng = np.random.default_rng(3)
    nx, ny, k = 5, 4, 3
    joint = rng.uniform(size=(nx, ny)) ** 3 + 0.05
    joint[np.arange(4), np.arange(4)] += 1.0  # strong dependence so the target is far from 0
    joint /= joint.sum()
    px, py = joint.sum(1), joint.sum(0)
    sigma = np.linalg.svd(joint / np.sqrt(np.outer(px, py)), compute_uv=False)
    assert sigma[0] == pytest.approx(1.0, abs=1e-9)
    target = 0.5 * float(np.sum(sigma[1 : k + 1] ** 2))

    torch.manual_seed(0)
    f_table = torch.nn.Parameter(torch.randn(nx, k) * 0.1)
    g_table = torch.nn.Parameter(torch.randn(ny, k) * 0.1)
    opt = torch.optim.Adam([f_table, g_table], lr=0.05)
    flat = torch.tensor(joint.ravel(), dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        idx = torch.multinomial(flat, 4096, replacement=True, generator=gen)
        loss = -soft_hgr(f_table[idx // ny], g_table[idx % ny])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Judge the learnt tables on a large fresh sample.
    idx = torch.multinomial(flat, 1_000_000, replacement=True, generator=gen)
    with torch.no_grad():
        reached = soft_hgr(f_table[idx // ny], g_table[idx % ny]).item()
    assert reached == pytest.approx(target, rel=0.02)
    # And it cannot exceed the bound (beyond sampling noise).
    assert reached <= target * 1.01


@pytest.mark.parametrize("case", ["n_smaller_than_k", "constant_features", "two_rows"])
def test_singular_covariance_gives_finite_loss_and_gradients(case):
    torch.manual_seed(0)
    if case == "n_smaller_than_k":
        f, g, h = (torch.randn(4, 512, requires_grad=True) for _ in range(3))
    elif case == "constant_features":
        f = torch.ones(8, 16, requires_grad=True)
        g = torch.full((8, 16), 3.0, requires_grad=True)
        h = torch.randn(8, 16, requires_grad=True)
    else:
        f, g, h = (torch.randn(2, 64, requires_grad=True) for _ in range(3))
    loss = correlation_loss(f, g, h)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (f, g, h):
        assert torch.isfinite(t.grad).all()
    if case == "constant_features":
        assert soft_hgr(f, g).item() == 0.0


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="at least 2 rows"):
        soft_hgr(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        soft_hgr(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="2-D"):
        soft_hgr(torch.randn(5), torch.randn(5))


def test_correlation_loss_terms():
    torch.manual_seed(0)
    f, g, h = torch.randn(10, 6), torch.randn(10, 6), torch.randn(10, 6)
    assert correlation_loss(f, g).item() == pytest.approx(-soft_hgr(f, g).item())
    expected = -(soft_hgr(f, g) + soft_hgr(f, h) + soft_hgr(g, h)).item()
    assert correlation_loss(f, g, h).item() == pytest.approx(expected, rel=1e-6)


def test_labeled_mask_removes_unlabelled_rows_from_h_terms():
    torch.manual_seed(0)
    f, g, h = torch.randn(12, 6), torch.randn(12, 6), torch.randn(12, 6)
    labeled = torch.tensor([True, False] * 6)
    expected = -(soft_hgr(f, g) + soft_hgr(f[labeled], h[labeled]) + soft_hgr(g[labeled], h[labeled]))
    assert correlation_loss(f, g, h, labeled).item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing an unlabelled row's h must not change the loss; changing a labelled one must.
    h2 = h.clone()
    h2[1] += 100.0
    assert correlation_loss(f, g, h2, labeled).item() == pytest.approx(expected.item(), rel=1e-6)
    h2[0] += 100.0
    assert correlation_loss(f, g, h2, labeled).item() != pytest.approx(expected.item(), rel=1e-3)
    # Gradients reach only the labelled rows of h.
    hg = h.clone().requires_grad_(True)
    correlation_loss(f, g, hg, labeled).backward()
    assert (hg.grad[~labeled] == 0).all() and (hg.grad[labeled] != 0).any()


def test_labeled_mask_with_fewer_than_two_labels_drops_h_terms():
    torch.manual_seed(0)
    f, g, h = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    one = torch.tensor([False, False, True, False, False, False])
    assert correlation_loss(f, g, h, one).item() == pytest.approx(-soft_hgr(f, g).item())
    with pytest.raises(ValueError, match="labeled mask"):
        correlation_loss(f, g, h, torch.ones(5, dtype=torch.bool))


@pytest.mark.parametrize("marked", [[0, 2, 3, 7, 9], [4, 5], [1], []])
def test_weighted_soft_hgr_equals_soft_hgr_of_the_marked_rows(marked):
    """Masking (no host sync) must give the value and gradients of indexing the rows."""
    torch.manual_seed(1)
    u, v = torch.randn(10, 4, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    weight = torch.zeros(10, dtype=torch.bool)
    weight[marked] = True
    masked = soft_hgr(u, v, weight)
    masked.backward()
    grads = u.grad.clone(), v.grad.clone()
    u.grad = v.grad = None
    if len(marked) >= 2:
        indexed = soft_hgr(u[weight], v[weight])
        indexed.backward()
        assert masked.item() == pytest.approx(indexed.item(), rel=1e-5, abs=1e-6)
        assert torch.allclose(grads[0], u.grad, atol=1e-6) and torch.allclose(grads[1], v.grad, atol=1e-6)
    else:  # nothing to correlate: 0, and no gradient anywhere
        assert masked.item() == 0.0
        assert (grads[0] == 0).all() and (grads[1] == 0).all()
    assert (grads[0][~weight] == 0).all()
    with pytest.raises(ValueError, match="weight"):
        soft_hgr(u, v, torch.ones(9))


def test_rows_missing_an_input_leave_its_correlation_terms():
    """A missing input's feature is zero: the terms that involve it use only the rows that have it
    (and, for h, a label), exactly as if the others were not in the batch."""
    torch.manual_seed(2)
    f, g, h = torch.randn(10, 4), torch.randn(10, 4), torch.randn(10, 4)
    visual = torch.tensor([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], dtype=torch.float32)
    audio = torch.tensor([1, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.float32)
    labeled = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    f, g = f * visual[:, None], g * audio[:, None]  # as the model gives them
    got = correlation_loss(f, g, h, labeled=labeled, visual=visual, audio=audio)
    v, a = visual.bool(), audio.bool()
    expected = -(soft_hgr(f[v & a], g[v & a]) + soft_hgr(f[v & labeled], h[v & labeled]) + soft_hgr(g[a & labeled], h[a & labeled]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() != pytest.approx(correlation_loss(f, g, h, labeled=labeled).item(), rel=1e-3)  # the zeros would count
    every = torch.ones(10)
    assert correlation_loss(f, g, h, visual=every, audio=every).item() == pytest.approx(correlation_loss(f, g, h).item(), rel=1e-6)
