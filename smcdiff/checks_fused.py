r"""Rows holding a NaN or ±inf, in one Triton kernel: one read of ``x``, no temporaries.

:func:`smcdiff.checks.nonfinite_rows` is called on the particles and the score at every step.
In torch, ``~isfinite(x).all(1)`` is four elementwise passes over ``(N, m)`` and a reduction
along the short rows that runs far below memory speed: about 1 ms per call at N = 10⁷,
m = 16 on an H200, three calls per FK step. The kernel reads a block of rows, tests
:math:`x \ne x \lor |x| = \infty` entry-wise and ORs along each row (in column chunks of at
most 64): memory speed.

It runs on CUDA tensors of a floating dtype (float16 / bfloat16 / float32 / float64) outside
``torch.compile`` (compiled code keeps the torch form, which inductor fuses); Triton's CPU
interpreter runs it too (``TRITON_INTERPRET=1``, the tests). If the kernel fails to compile or
launch, one warning line is printed and every later call takes the torch path.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["fused_nonfinite_rows"]

try:  # Triton is optional: CUDA builds of torch ship it, CPU builds do not
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install
    triton = None

_STATE = {"failed": False}

if triton is not None:

    @triton.jit
    def _nonfinite_rows_kernel(x_ptr, out_ptr, N, M, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_rows = rows < N
        base = rows.to(tl.int64)[:, None] * M
        bad = tl.zeros((BLOCK_N,), tl.int32)
        for m0 in range(0, M, BLOCK_M):
            cols = m0 + tl.arange(0, BLOCK_M)
            mask = in_rows[:, None] & (cols < M)[None, :]
            v = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0)
            nf = (v != v) | (tl.abs(v) == float("inf"))
            bad = tl.maximum(bad, tl.max(nf.to(tl.int32), axis=1))
        tl.store(out_ptr + rows, bad != 0, mask=in_rows)


def fused_nonfinite_rows(flat: torch.Tensor) -> torch.Tensor | None:
    """Boolean ``(N,)``: rows of ``flat`` ``(N, m)`` (floating) holding a NaN or ±inf, from the
    kernel; ``None`` where it does not run (no Triton, an earlier failure, inside
    ``torch.compile``): the caller's torch path."""
    if triton is None or _STATE["failed"] or torch.compiler.is_compiling():
        return None
    flat = flat.contiguous()
    n, m = flat.shape
    if n == 0 or m == 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    out = torch.empty(n, dtype=torch.bool, device=flat.device)  # the kernel writes every row
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    block_n = max(16, 4096 // block_m)
    try:
        _nonfinite_rows_kernel[(triton.cdiv(n, block_n),)](
            flat, out, n, m, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=4
        )
    except Exception as err:  # compilation or launch failed: the torch path from now on
        _STATE["failed"] = True
        warnings.warn(f"nonfinite_rows: the Triton kernel failed ({err!r}); using the torch "
                      "path from now on", stacklevel=3)  # fmt: skip
        return None
    return out
