"""Reading what the CPU can do from its flags (``polarprune.hardware``)."""

from __future__ import annotations

from polarprune.hardware import cpu_native_bf16


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_native_bf16("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx512_vnni\n") is True
    assert cpu_native_bf16("flags : fpu avx512f amx_bf16 amx_tile\n") is True
    assert cpu_native_bf16("flags : fpu sse avx512f avx512bw avx512_vnni\n") is False  # AVX-512 alone is not enough
    assert cpu_native_bf16("flags : fpu sse avx2 fma\n") is False
    assert cpu_native_bf16("processor : 0\n") is None  # no flags line: unknown, not False
