r"""Row gather ``x[idx]`` for resampling: a Triton kernel on CUDA, ``index_select`` elsewhere.

Resampling ends by copying every particle's row from its ancestor: :math:`y_k = x_{A_k}`. On
CUDA, ``torch.index_select`` moves a float32 ``(10^7, 32)`` state at about a tenth of the
device's copy bandwidth (one index load per element). :func:`gather_rows` loads each index once
per row and moves the row as whole machine words: a row of ``D`` elements whose bytes divide
into 8-byte (or 4-byte) words is reinterpreted as those words (the values are copied bit for bit,
so every dtype, NaN payloads included, comes out exactly as ``x[idx]``).

The Triton path runs when ``x`` is a CUDA tensor, Triton imports, the event dimensions of ``x``
can be viewed as one row (``x.reshape(N, -1)`` without a copy) and ``idx`` is a 1-d int32 /
int64 CUDA tensor; anything else (and the CPU) takes ``torch.index_select``. If the kernel fails
to compile or launch, one warning line is printed and every later call takes the fallback.

Indices must lie in ``[0, N)``. ``index_select`` raises otherwise; the Triton path does not
check (a check would cost a host-device sync) and writes zero rows for out-of-range indices.
The engine's ancestors are in range by construction (the schemes clamp them).
"""

from __future__ import annotations

import warnings

import torch

from smcdiff.checks import check_choice
from smcdiff.errors import SMCDiffError

__all__ = ["gather_rows", "triton_available"]

try:  # Triton is optional: CUDA builds of torch ship it, CPU builds do not
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install
    triton = None

_STATE = {"failed": False}


def triton_available() -> bool:
    """Whether the Triton path can run (Triton imported and no earlier launch failed)."""
    return triton is not None and not _STATE["failed"]


if triton is not None:

    @triton.jit
    def _gather_kernel(
        x_ptr, idx_ptr, out_ptr, M, N, D, stride_r, stride_c,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        in_rows = rows < M
        src = tl.load(idx_ptr + rows, mask=in_rows, other=0).to(tl.int64)
        ok = in_rows & (src >= 0) & (src < N)
        in_cols = cols < D
        vals = tl.load(
            x_ptr + src[:, None] * stride_r + cols[None, :] * stride_c,
            mask=ok[:, None] & in_cols[None, :],
            other=0,
        )
        dst = out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :]
        tl.store(dst, vals, mask=in_rows[:, None] & in_cols[None, :])


def _words(x2: torch.Tensor) -> torch.Tensor:
    """``x2`` ``(N, D)`` with unit column stride viewed as the widest words (int64 / int32)
    that tile each row and are aligned; as is otherwise (bool as uint8)."""
    if x2.dtype == torch.bool:
        x2 = x2.view(torch.uint8)
    if x2.stride(-1) != 1 or x2.shape[1] == 0:
        return x2
    row_bytes = x2.shape[1] * x2.element_size()
    for word, size in ((torch.int64, 8), (torch.int32, 4)):
        aligned = x2.data_ptr() % size == 0 and (x2.stride(0) * x2.element_size()) % size == 0
        if row_bytes % size == 0 and aligned and x2.element_size() <= size:
            return x2.view(word)
    return x2


def _triton_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
    """The Triton path, or ``None`` where it does not apply (the caller falls back)."""
    n = x.shape[0]
    try:
        x2 = x.view(n, -1) if x.dim() != 2 else x
    except RuntimeError:  # event dimensions that are not one strided row
        return None
    if x2.dtype.is_complex:
        x2 = torch.view_as_real(x2).reshape(n, -1) if x2.is_contiguous() else None
        if x2 is None:
            return None
    w = _words(x2)
    m, d = idx.shape[0], w.shape[1]
    if m == 0 or d == 0:  # nothing to move: index_select handles the empty shapes
        return None
    out = torch.empty((m, d), dtype=w.dtype, device=x.device)
    block_d = min(max(triton.next_power_of_2(d), 2), 256)  # >= 2: no size-1 block axis
    block_r = max(1, min(4096 // block_d, 1024))
    grid = (triton.cdiv(m, block_r), triton.cdiv(d, block_d))
    _gather_kernel[grid](w, idx, out, m, n, d, w.stride(0), w.stride(1), BLOCK_R=block_r,
                         BLOCK_D=block_d, num_warps=4)  # fmt: skip
    return _as(out, x, m)


def _as(out: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
    """The gathered words ``(m, D')`` as rows of ``x``'s dtype and event shape."""
    if x.dtype.is_complex:
        return torch.view_as_complex(out.view(x.real.dtype).reshape(m, *x.shape[1:], 2))
    if x.dtype == torch.bool:
        return out.view(torch.uint8).view(torch.bool).reshape(m, *x.shape[1:])
    return out.view(x.dtype).reshape(m, *x.shape[1:])


def gather_rows(x: torch.Tensor, idx: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``x[idx]`` along the first dimension: ``x`` ``(N, *event)``, ``idx`` ``(M,)`` int32 or
    int64 in ``[0, N)`` -> ``(M, *event)``, contiguous, equal to ``x.index_select(0, idx)``
    bit for bit (module docstring). ``backend``: ``"auto"`` (Triton on CUDA where it applies,
    else ``index_select``), ``"torch"`` (``index_select``) or ``"triton"`` (the kernel on any
    device Triton runs on, e.g. CPU tensors under ``TRITON_INTERPRET=1``; raises where it does
    not apply)."""
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise SMCDiffError(
            f"gather_rows: idx must be a 1-d int32 or int64 tensor, got {tuple(idx.shape)} "
            f"{idx.dtype}"
        )
    if x.dim() == 0:
        raise SMCDiffError("gather_rows: x must have a leading (particle) dimension")
    check_choice("backend", backend, ("auto", "torch", "triton"), where="gather_rows")
    if backend == "triton":
        if triton is None:
            raise SMCDiffError("gather_rows: backend='triton' but Triton is not installed")
        out = _triton_gather(x, idx.contiguous())
        if out is None:
            raise SMCDiffError("gather_rows: the Triton kernel does not apply to these inputs")
        return out
    fast = backend == "auto" and x.is_cuda and idx.device == x.device and triton_available()
    if fast:
        try:
            out = _triton_gather(x, idx.contiguous())
        except Exception as err:  # compilation or launch failed: fall back for good
            _STATE["failed"] = True
            warnings.warn(f"gather_rows: the Triton kernel failed ({err!r}); using "
                          "torch.index_select from now on", stacklevel=2)  # fmt: skip
            out = None
        if out is not None:
            return out
    return x.index_select(0, idx)
