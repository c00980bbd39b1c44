"""What the machine can do fast, where that changes which training settings pay off."""

from __future__ import annotations

from pathlib import Path


def cpu_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX): without it bf16 autocast is
    emulated and far slower than fp32. None where /proc/cpuinfo does not say (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo; "" where it does not say (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
