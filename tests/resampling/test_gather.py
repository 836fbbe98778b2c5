"""gather_rows equals x[idx] bit for bit: the index_select fallback everywhere, the Triton kernel
on CUDA (skipped without a GPU) and under Triton's CPU interpreter (skipped without Triton)."""

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.resampling.gather import gather_rows
from tests.triton_interpreter import needs_triton, run_interpreted


def _cases(device):
    """(x, idx) pairs on ``device``: dtypes, event shapes, non-contiguous views (made on the
    device), int32 / int64 indices, an empty gather."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(50, 12, generator=gen).to(device)
    idx = torch.randint(0, 50, (70,), generator=gen).to(device)
    nan = base.clone()
    nan[3, 5] = float("nan")
    yield nan, idx
    yield base.double(), idx.int()
    yield base.half(), idx
    yield base.bfloat16()[:, :7], idx.int()  # odd row length, a strided view
    yield base[:, ::3], idx  # column stride 3
    yield base.t().contiguous().t(), idx  # column-major
    yield base[:, :5].contiguous(), idx.sort().values  # 20-byte rows (int32 words)
    yield base.reshape(50, 3, 4), idx  # event shape (3, 4)
    yield base.reshape(50, 3, 4)[:, 1:], idx  # a slice of the event (one strided row)
    yield base[:, 0], idx  # (N,) scalars per particle, stride 12
    yield base > 0, idx.int()  # bool
    yield torch.randint(-9, 9, (50, 6), generator=gen, dtype=torch.int16).to(device), idx
    yield torch.randint(-9, 9, (50, 3), generator=gen).to(device), idx  # int64
    yield torch.complex(base, -base)[:, :4].contiguous(), idx
    yield base[:5, :3], idx[:0]  # nothing to gather


def _same(a, b):
    """Bit-for-bit equal values (NaN where NaN), same shape and dtype."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.dtype.is_floating_point:
        assert torch.equal(a.isnan(), b.isnan())
        a, b = a.nan_to_num(7.0), b.nan_to_num(7.0)
    assert torch.equal(a, b)


def test_fallback_is_index_select_exactly():
    for x, idx in _cases("cpu"):
        _same(gather_rows(x, idx), x[idx.long()])
        _same(gather_rows(x, idx, backend="torch"), x[idx.long()])


def test_arguments_are_checked():
    x = torch.zeros(4, 2)
    with pytest.raises(SMCDiffError, match="idx must be"):
        gather_rows(x, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(SMCDiffError, match="idx must be"):
        gather_rows(x, torch.zeros(2))
    with pytest.raises(SMCDiffError, match="backend"):
        gather_rows(x, torch.zeros(2, dtype=torch.long), backend="cuda")


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the CUDA path needs a GPU (CI has none; run with a GPU, as on the device)",
)
def test_triton_path_on_cuda_equals_x_idx():
    from smcdiff.resampling.gather import triton_available

    if not triton_available():
        pytest.skip("Triton is not installed: gather_rows uses index_select (tested above)")
    for x, idx in _cases("cuda"):
        _same(gather_rows(x, idx), x[idx.long()])
    big = torch.randn(100_003, 32, device="cuda")
    idx = torch.randint(0, 100_003, (100_003,), device="cuda")
    _same(gather_rows(big, idx, backend="triton"), big[idx])


INTERPRETED = """
import torch
from smcdiff.resampling.gather import gather_rows
from tests.resampling.test_gather import _cases, _same
n = 0
for x, idx in _cases("cpu"):
    try:
        out = gather_rows(x, idx, backend="triton")
    except Exception as err:  # the kernel does not apply (empty): index_select's job
        assert idx.numel() == 0, err
        continue
    _same(out, x[idx.long()])
    n += 1
print("checked", n)
"""


@pytest.mark.slow
@needs_triton
def test_triton_kernel_under_the_cpu_interpreter():
    run_interpreted(INTERPRETED, "checked 14")
