"""One rule for the precision a model computes in, in training and in inference.

bf16 autocast where it is the faster choice: on CUDA, and on CPUs that compute bfloat16 natively
(AVX-512 BF16 or AMX; there a ResNet trains 2-2.5x faster than in float32). Elsewhere float32: a
CPU without native bf16 emulates it, slower than float32. A run records the precision it trained
in (``TrainConfig.amp``, resolved at once); evaluation and prediction compute in the precision the
run was trained in where the device computes it natively, else in float32 (``inference_amp``).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):  # torch's private cpuinfo helpers
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - an unknown CPU: float32 is always right
            pass
    return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 autocast is faster than float32 there)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def default_amp(device: str | torch.device = "auto") -> bool:
    """Training's default: bf16 autocast where ``device`` computes it natively."""
    from .distributed import resolve_device

    return native_bf16(resolve_device(device) if isinstance(device, str) else device)


def inference_amp(trained_amp: bool | None, device: torch.device) -> bool:
    """Evaluation and prediction: the run's own precision where ``device`` computes it natively,
    else float32 (a model trained in bf16 answers in float32 on a CPU without bf16, and one trained
    in float32 always answers in float32)."""
    return bool(trained_amp) and native_bf16(device)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on ``device`` when ``amp``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def describe_machine(device: str | torch.device = "auto") -> str:
    """What a figure was measured on, in words: the GPU's name, else the CPU's cores and model (CPU
    kernels differ between machines)."""
    from .distributed import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        return f"a GPU ({torch.cuda.get_device_name(dev)})"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"the CPU ({os.cpu_count()}-core {name})"
