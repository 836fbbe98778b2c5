"""smcdiff.checks_fused: the Triton row-finiteness kernel against ``~isfinite(x).all(1)``,
under Triton's CPU interpreter (skipped without Triton) and on CUDA (skipped without a GPU)."""

import pytest
import torch

from smcdiff.checks import nonfinite_rows
from tests.triton_interpreter import needs_triton, run_interpreted

INTERPRETED = """
import torch
from smcdiff.checks_fused import fused_nonfinite_rows

n = 0
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.float16):
    for rows, m in ((300, 16), (77, 1), (130, 5), (65, 150), (0, 4), (5, 0)):  # 150: 3 chunks
        x = torch.randn(rows, m, generator=g).to(dtype)
        if rows and m:
            for r, c, v in ((0, 0, float("nan")), (2, m - 1, float("inf")),
                            (rows - 1, m // 2, -float("inf"))):
                x[r, c] = v
        bad = fused_nonfinite_rows(x)
        want = ~torch.isfinite(x).all(1)
        assert bad.dtype == torch.bool and torch.equal(bad, want), (dtype, rows, m)
        assert int(bad.sum()) == (min(rows, 3) if m else 0), (dtype, rows, m)
        n += 1
big = torch.full((4, 3), 3.0e38)  # finite however large: no overflow anywhere
assert not fused_nonfinite_rows(big).any()
print("checked", n)
"""


@pytest.mark.slow
@needs_triton
def test_kernel_under_the_cpu_interpreter():
    run_interpreted(INTERPRETED, "checked 18")


def test_torch_path_names_the_bad_rows():
    x = torch.zeros(6, 2, 3)
    x[1, 0, 2], x[4, 1, 1] = float("nan"), -float("inf")
    assert nonfinite_rows(x).tolist() == [False, True, False, False, True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernel runs on CUDA")
def test_cuda_path_equals_the_torch_path():
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(100_003, 16, generator=g, device="cuda").to(dtype)
        idx = torch.randint(0, 100_003, (50,), generator=g, device="cuda")
        x[idx, idx % 16] = float("nan")
        x[idx[:10] // 2, 3] = -float("inf")
        want = ~torch.isfinite(x).all(1)
        assert torch.equal(nonfinite_rows(x), want) and int(want.sum()) >= 50
