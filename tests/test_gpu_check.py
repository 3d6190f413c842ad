"""bench/gpu_check.py, the one prepared run for a lent GPU: its code paths, on the CPU at tiny sizes."""

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_smoke_runs_every_part_on_the_cpu_in_under_3_minutes(tmp_path):
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    took = time.perf_counter() - t
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = results["parts"]
    assert list(parts) == ["cache", "step", "inference", "predict", "speech"]
    assert not [name for name, r in parts.items() if "error" in r or "skipped" in r], parts
    assert parts["cache"]["videos"] == 6 and parts["cache"]["videos_per_s"] > 0
    step = parts["step"]["batch8"]
    assert step["b_over_a"] > 0 and step["c_over_b"] > 0 and step["host_syncs_per_step"] is None  # syncs are counted on CUDA only
    assert parts["predict"]["windows"] == 4 and 0 <= parts["speech"]["test_video_accuracy"] <= 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "b/a = " in md and "videos/s" in md and md.count("\n| ") == 2 + 5  # the header, its rule and one row per part
    assert took < 180, f"--smoke took {took:.0f} s"


def test_a_part_that_fails_is_recorded_and_the_others_still_report(tmp_path):
    """A run cut short still reports: here the step part cannot run (no cache: the cache part was left out)."""
    res = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path), "--parts", "step,predict"],
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert "error" in parts["step"] and "failed" in parts["step"]["error"]
    assert parts["predict"]["warm_clip_s"] > 0
