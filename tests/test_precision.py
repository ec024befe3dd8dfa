"""The default dtype per device (regiondrag/precision.py): bfloat16 only on a CPU with bfloat16 arithmetic."""
import pytest
import torch

from regiondrag.precision import default_dtype, emulated_dtype_error, parse_cpu_flags

# /proc/cpuinfo lines as Linux writes them (shortened): an AVX512-BF16 x86, an AVX2-only x86, a Neoverse-V1 Arm
EPYC = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma f16c\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd fphp asimdhp sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, dtype, fp16_native", [(EPYC, torch.bfloat16, False), (AVX2, torch.float32, False),
                                                         (NEOVERSE, torch.bfloat16, True)])
def test_cpu_default_follows_the_flags(cpuinfo, dtype, fp16_native):
    flags = parse_cpu_flags(cpuinfo)
    assert default_dtype("cpu", flags)[0] == dtype
    assert (emulated_dtype_error("cpu", torch.float16, flags) is None) == fp16_native
    assert emulated_dtype_error("cpu", torch.float32, flags) is None
    assert (emulated_dtype_error("cpu", torch.bfloat16, flags) is None) == (dtype == torch.bfloat16)


def test_gpu_default_is_the_references_float16_and_nothing_is_refused_there():
    assert default_dtype("cuda", frozenset())[0] == torch.float16
    assert emulated_dtype_error("cuda:0", torch.float16, frozenset()) is None
