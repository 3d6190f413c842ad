"""The paper's three studies as commands, on any prepared cache.

  stability  fusion layers × {baseline, fg, fgh} × λ, plus audio-only and visual-only rows
             (the paper's Tables 4-6)
  missing    baseline, fg, fgh (two fusion layers, λ = 1) against the share of test videos that
             miss audio, visual, or both (half each) (the paper's Figure 7)
  semi       labelled fractions × {audio, visual, baseline, fg, fgh per λ} (the paper's Table 7)

Every study is a list of training jobs. The stage-1 networks depend only on the seed (and, in
`semi`, on the labelled fraction), so they are trained once per seed in a "base" run that
every other cell of that seed starts from (``init_from``); unimodal rows evaluate those
networks. The missing-modality study evaluates each trained model at every rate; it never
retrains per rate. Each job is a run folder under DIR/runs/: rerun the study and finished
jobs are read back, an interrupted one resumes, and only what is missing is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import atomic_write_text, write_csv
from .config import PAPER_FRACTIONS, PAPER_LAMS, PAPER_LAYERS, PAPER_RATES, QUICK_STUDY
from .stats import mean_std, sample_std
from .train import TrainConfig, train


@dataclass
class StudyOptions:
    cache: str
    out: str
    runs: int = 5
    seed: int = 0
    epochs: int | None = None  # stage 1's (the recipe's)
    joint_epochs: int | None = None  # stage 2's (the recipe's)
    batch_size: int | None = None  # the recipe's
    lr: float = 1e-3
    backbone: str | None = None  # the recipe's
    pretrained: str = "none"
    split: str = "random"
    device: str = "auto"
    recipe: str = "avhgr"  # or "paper": the paper's literal settings (see TrainConfig)
    layers: tuple[int, ...] = PAPER_LAYERS
    lams: tuple[float, ...] = PAPER_LAMS
    rates: tuple[float, ...] = PAPER_RATES
    fractions: tuple[float, ...] = PAPER_FRACTIONS

    @classmethod
    def quick(cls, cache: str, out: str, **kw) -> "StudyOptions":
        """A smoke version: one seed, one epoch per stage, a ResNet-18, a reduced grid."""
        return cls(cache=cache, out=out, **{**QUICK_STUDY, **kw})

    def config(self, folder: str, seed: int, **kw) -> TrainConfig:
        joint = kw.get("modalities", ("audio", "visual")) == ("audio", "visual")
        return TrainConfig(
            cache=self.cache, out=str(Path(self.out) / "runs" / folder / f"seed{seed}"), epochs=self.epochs,
            joint_epochs=self.joint_epochs if joint else None, batch_size=self.batch_size, lr=self.lr, seed=seed,
            backbone=self.backbone, pretrained=self.pretrained, split=self.split, device=self.device, recipe=self.recipe, **kw,
        )  # fmt: skip

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.runs)]


def lam_name(lam: float) -> str:
    return f"{lam:g}"


def run_jobs(jobs: list[tuple[str, TrainConfig]], title: str, log=print) -> dict[str, dict]:
    """Run each job in order: a finished one is read back once its settings are checked (a cell
    asked for under other settings is refused, naming them), an interrupted one resumes. A bar
    counts the cells; within a cell, each epoch shows its own bar as `avhgr train` does."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc=title, unit="run")  # tqdm shows the time left
    for key, cfg in jobs:
        bar.set_postfix_str(key)
        results[key] = train(cfg, resume=True, log=lambda *a: None, progress=True)
        bar.update(1)
    bar.close()
    return results


def _cells_table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- stability


def stability(opt: StudyOptions, log=print) -> dict:
    jobs: list[tuple[str, TrainConfig]] = []
    for seed in opt.seeds:
        # The first baseline trains stage 1 for this seed; every other cell starts from it.
        base = opt.config(f"baseline_L{opt.layers[0]}", seed, corr="none", fusion_layers=opt.layers[0])
        init = dict(init_from=base.out)
        jobs.append((f"baseline/L{opt.layers[0]}/{seed}", base))
        jobs.append((f"audio/{seed}", opt.config("audio", seed, modalities=("audio",), **init)))
        jobs.append((f"visual/{seed}", opt.config("visual", seed, modalities=("visual",), **init)))
        for layers in opt.layers:
            if layers != opt.layers[0]:
                cfg = opt.config(f"baseline_L{layers}", seed, corr="none", fusion_layers=layers, **init)
                jobs.append((f"baseline/L{layers}/{seed}", cfg))
            for method in ("fg", "fgh"):
                for lam in opt.lams:
                    folder = f"{method}_lam{lam_name(lam)}_L{layers}"
                    jobs.append((f"{method}/{lam_name(lam)}/L{layers}/{seed}", opt.config(folder, seed, corr=method, lam=lam, fusion_layers=layers, **init)))
    t0 = time.time()
    results = run_jobs(jobs, "stability grid", log)
    acc = lambda key: [results[f"{key}/{s}"]["video_accuracy"] for s in opt.seeds]  # noqa: E731
    rows_def = [("audio only", "audio", False), ("visual only", "visual", False), ("baseline", "baseline", True)]
    rows_def += [(f"{m} (λ = {lam_name(l)})", f"{m}/{lam_name(l)}", True) for m in ("fg", "fgh") for l in opt.lams]
    header = ["method", *[f"{n} fusion layer{'s' if n > 1 else ''}" for n in opt.layers]]
    table, csv_rows, grid = [], [], []
    for name, key, per_layer in rows_def:
        cells, line = [], []
        for layers in opt.layers:
            vals = acc(f"{key}/L{layers}") if per_layer else acc(key)
            cells.append(mean_std(vals))
            line.append(float(np.mean(vals)))
            csv_rows.append({"method": name, "fusion_layers": layers if per_layer else "", "runs": len(vals),
                             "mean": round(float(np.mean(vals)), 6), "std": round(sample_std(vals), 6),
                             **{f"seed{s}": round(v, 6) for s, v in zip(opt.seeds, vals)}})  # fmt: skip
        table.append((name, cells))
        grid.append(line)
    # Unimodal rows do not depend on the fusion network: one CSV row each is enough.
    seen, dedup = set(), []
    for r in csv_rows:
        k = (r["method"], r["fusion_layers"])
        if k not in seen:
            seen.add(k)
            dedup.append(r)
    out = Path(opt.out)
    md = f"# Stability grid: test video accuracy (%), mean ± std over {opt.runs} run(s)\n\n"
    md += _cells_table(table, header) + "\n\n" + _settings_line(opt) + f"\n\n![heat map](stability.png)\n\nWall time: {time.time() - t0:.0f} s.\n"
    atomic_write_text(out / "stability.md", md)
    _write_csv(out / "stability.csv", dedup)
    from .plots import heatmap_png

    heatmap_png(np.array(grid), [r[0] for r in table], header[1:], out / "stability.png", f"test video accuracy (%), {opt.runs} run(s)")
    return {"rows": [r[0] for r in table], "columns": header[1:], "mean": grid}


# --------------------------------------------------------------------------- missing modality


def missing(opt: StudyOptions, log=print) -> dict:
    from .evaluate import evaluate_run

    layers = 2 if 2 in opt.layers else opt.layers[0]
    jobs: list[tuple[str, TrainConfig]] = []
    for seed in opt.seeds:
        base = opt.config("base", seed, corr="none", fusion_layers=layers)
        jobs.append((f"baseline/{seed}", base))  # the base run is the baseline model itself
        for method in ("fg", "fgh"):
            # Folders of its own: stability's cells of the same name start from another base run.
            cfg = opt.config(f"missing_{method}_lam1_L{layers}", seed, corr=method, lam=1.0, fusion_layers=layers, init_from=base.out)
            jobs.append((f"{method}/{seed}", cfg))
    run_jobs(jobs, "missing-modality models", log)
    rows = []
    scenarios = ("audio", "visual", "both")
    for method in ("baseline", "fg", "fgh"):
        for scenario in scenarios:
            for rate in opt.rates:
                vals = []
                for seed in opt.seeds:
                    run = Path(jobs[[k for k, _ in jobs].index(f"{method}/{seed}")][1].out)
                    vals.append(evaluate_run(run, missing=scenario, rate=rate, seed=seed, device=opt.device)["video_accuracy"])
                rows.append({"method": method, "scenario": scenario, "rate": rate, "runs": len(vals), "mean": round(float(np.mean(vals)), 6),
                             "std": round(sample_std(vals), 6)})  # fmt: skip
    out = Path(opt.out)
    _write_csv(out / "missing.csv", rows)
    from .plots import missing_png

    missing_png(rows, scenarios, out / "missing.png")
    md = f"# Missing modality at test time: video accuracy (%), mean over {opt.runs} run(s)\n\n"
    header = ["method", *[f"{s} missing @ {int(100 * r)} %" for s in scenarios for r in opt.rates]]
    table = [(m, [f"{100 * next(x['mean'] for x in rows if x['method'] == m and x['scenario'] == s and x['rate'] == r):.2f}" for s in scenarios for r in opt.rates])
             for m in ("baseline", "fg", "fgh")]  # fmt: skip
    md += _cells_table(table, header) + "\n\n" + _settings_line(opt) + f", {layers} fusion layers, λ = 1\n\n![missing](missing.png)\n"
    atomic_write_text(out / "missing.md", md)
    return {"rows": rows}


# --------------------------------------------------------------------------- semi-supervised


def semi(opt: StudyOptions, log=print) -> dict:
    layers = 1 if 1 in opt.layers else opt.layers[0]
    jobs: list[tuple[str, TrainConfig]] = []
    for frac in opt.fractions:
        f = f"{frac:g}"
        for seed in opt.seeds:
            base = opt.config(f"p{f}_baseline", seed, corr="none", fusion_layers=layers, labeled_fraction=frac)
            jobs.append((f"{f}/baseline/{seed}", base))
            init = dict(init_from=base.out, labeled_fraction=frac)
            jobs.append((f"{f}/audio/{seed}", opt.config(f"p{f}_audio", seed, modalities=("audio",), **init)))
            jobs.append((f"{f}/visual/{seed}", opt.config(f"p{f}_visual", seed, modalities=("visual",), **init)))
            for method in ("fg", "fgh"):
                for lam in opt.lams:
                    jobs.append((f"{f}/{method} (λ = {lam_name(lam)})/{seed}", opt.config(f"p{f}_{method}_lam{lam_name(lam)}", seed, corr=method, lam=lam,
                                                                                           fusion_layers=layers, **init)))
    results = run_jobs(jobs, "semi-supervised", log)
    methods = ["audio", "visual", "baseline", *[f"{m} (λ = {lam_name(l)})" for m in ("fg", "fgh") for l in opt.lams]]
    rows, table = [], []
    for method in methods:
        cells = []
        for frac in opt.fractions:
            vals = [results[f"{frac:g}/{method}/{s}"]["video_accuracy"] for s in opt.seeds]
            cells.append(mean_std(vals))
            rows.append({"method": method, "labeled_fraction": frac, "runs": len(vals), "mean": round(float(np.mean(vals)), 6),
                         "std": round(sample_std(vals), 6)})  # fmt: skip
        table.append((method, cells))
    out = Path(opt.out)
    _write_csv(out / "semi.csv", rows)
    header = ["method", *[f"{int(100 * f)} % labelled" for f in opt.fractions]]
    md = f"# Semi-supervised: test video accuracy (%), mean ± std over {opt.runs} run(s)\n\n"
    md += _cells_table(table, header) + "\n\n" + _settings_line(opt) + f", {layers} fusion layer(s)\n"
    atomic_write_text(out / "semi.md", md)
    return {"rows": methods, "columns": header[1:], "table": rows}


def _settings_line(opt: StudyOptions) -> str:
    cfg = opt.config("settings", opt.seed)  # what the cells train with, the recipe's defaults resolved
    return (f"Settings: cache `{Path(opt.cache).name}`, recipe {cfg.recipe}, {cfg.backbone}, {cfg.epochs} epochs of stage 1 "
            f"and {cfg.joint_epochs} of stage 2, batch {cfg.batch_size}, lr {cfg.lr:g}, "
            f"{cfg.windows_per_epoch} windows per file each epoch, {cfg.split} split, seeds {opt.seeds}")  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    write_csv(path, fields, [[r.get(k, "") for k in fields] for r in rows])


STUDIES = {"stability": stability, "missing": missing, "semi": semi}
