"""Figures over seeds: mean ± std, and paired differences with their 95 % interval.

A comparison of two methods is paired: in each seed both start from the same stage 1 and see
the same batches, so the seed-to-seed spread they share cancels in their difference.
"""

from __future__ import annotations

import numpy as np


def sample_std(values) -> float:
    """The sample standard deviation (ddof 1); 0 for a single value."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_std(values, decimals: int = 2, scale: float = 100.0) -> str:
    """"m ± s" of ``values`` × ``scale`` (sample standard deviation); one value: just it."""
    v = scale * np.asarray([x for x in values], dtype=float)
    if not len(v):
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{decimals}f}"
    return f"{v.mean():.{decimals}f} ± {v.std(ddof=1):.{decimals}f}"


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """``a`` − ``b`` per seed: the mean difference, its t interval (``confidence``), the sample
    standard deviation and the number of seeds where a is above, equal to and below b."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) + 0.0 if n else float("nan")  # + 0.0: no "-0.0"
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": sd, "low": mean - half + 0.0, "high": mean + half + 0.0,
            "above": int((d > 0).sum()), "equal": int((d == 0).sum()), "below": int((d < 0).sum())}  # fmt: skip


def format_difference(diff: dict, scale: float = 100.0, unit: str = " points") -> str:
    """"+1.7 points [−2.0, +5.4] (95 %), 3 up / 1 equal / 1 down" for ``paired_difference``."""
    if diff["n"] < 2:
        return f"{scale * diff['mean']:+.1f}{unit} (one seed: no interval)"
    return (f"{scale * diff['mean']:+.1f}{unit} [{scale * diff['low']:+.1f}, {scale * diff['high']:+.1f}] (95 %), "
            f"{diff['above']} up / {diff['equal']} equal / {diff['below']} down")  # fmt: skip
