"""Figures over seeds and units: mean ± std, paired differences with their 95 % interval.

The unit of a cross-validated comparison is the subject (``unit_paired``): each actor is tested once
per seed (the folds are a fixed partition), so its difference averaged over seeds is one independent
figure, and the interval is taken over those, never over overlapping resamples.

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


# --------------------------------------------------------------------------- comparisons across units

UNIT_RULE = ("95 % t interval over the units (df = units - 1): each unit's difference is a mean over its "
             "recordings and seeds, so close to normal, and with about a dozen units a percentile bootstrap "
             "would be too narrow (it ignores the t tails and shrinks the spread by sqrt((n-1)/n))")


def unit_accuracy(outcomes: list[dict], unit: str = "actor") -> dict:
    """The accuracy of one method per unit (``outcomes``: one row per tested recording and seed,
    with ``seed``, ``fold``, ``video``, ``correct`` and the unit's key), averaged over seeds: the
    mean over units, its t interval, and each unit's figure."""
    per = _per_unit(outcomes, unit)
    values = np.array(list(per.values()), dtype=float)
    return {"unit": unit, "n": len(values), **_t_interval(values), "per_unit": per}


def unit_paired(a: list[dict], b: list[dict], unit: str = "actor", confidence: float = 0.95) -> dict:
    """``a`` − ``b``, paired: both methods' outcomes on the same recordings in the same seeds (one row
    per tested recording and seed, as ``unit_accuracy`` takes). Each unit's difference is its
    accuracy difference in each seed, averaged over the seeds; the interval is over the units
    (``UNIT_RULE``). Beside it, the difference per fold (over the fold's test recordings, averaged
    over seeds) and per seed (over every recording tested in that seed), and how many units are up,
    equal and down. Refuses outcomes that are not paired (another set of recordings or seeds)."""
    key = lambda r: (r["seed"], r["video"])  # noqa: E731
    if sorted(map(key, a)) != sorted(map(key, b)):
        raise ValueError("unit_paired: the two methods were not tested on the same recordings in the same seeds")
    by_key = {key(r): r for r in b}
    rows = [{**r, "diff": float(r["correct"]) - float(by_key[key(r)]["correct"])} for r in a]
    per_unit = _per_unit(rows, unit, "diff")
    d = np.array(list(per_unit.values()), dtype=float)
    out = {"unit": unit, "n": len(d), **_t_interval(d, confidence), "above": int((d > 0).sum()), "equal": int((d == 0).sum()),
           "below": int((d < 0).sum()), "per_unit": per_unit, "per_fold": _per_unit(rows, "fold", "diff"),
           "per_seed": {s: float(np.mean([r["diff"] for r in rows if r["seed"] == s])) for s in sorted({r["seed"] for r in rows})},
           "rule": UNIT_RULE}  # fmt: skip
    return out


def _per_unit(rows: list[dict], unit: str, value: str = "correct") -> dict:
    """Per unit: the mean of ``value`` over its rows of each seed, then over the seeds."""
    cells: dict = {}
    for r in rows:
        cells.setdefault(r[unit], {}).setdefault(r["seed"], []).append(float(r[value]))
    return {u: float(np.mean([np.mean(v) for v in seeds.values()])) for u, seeds in sorted(cells.items(), key=lambda kv: str(kv[0]))}


def _t_interval(values: np.ndarray, confidence: float = 0.95) -> dict:
    from scipy import stats

    n = len(values)
    mean = float(values.mean()) + 0.0 if n else float("nan")
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "std": sd, "low": mean - half + 0.0, "high": mean + half + 0.0}
