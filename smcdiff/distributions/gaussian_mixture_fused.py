r"""A Gaussian mixture's score and log-density in one Triton kernel: no ``(N, K, d)`` temporaries.

:meth:`GaussianMixture.score_and_log_prob <smcdiff.distributions.GaussianMixture.score_and_log_prob>`
forms the whitened residuals :math:`z_{nk} = W_k x_n + c_k` of every row and component, ``(N, K,
d)``, and two more tensors of that size: at N = 10⁷, K = 8, d = 16 that is 5 GB each, and the
score is bound by moving them through memory. :func:`fused_score_and_log_prob` keeps a block of
rows in registers and runs over the components with an online log-sum-exp (as flash attention
does over keys): per component two small matrix products,

.. math::
    z = x W_k^\top + c_k,\quad \ell_k = \log\text{norm}_k - \tfrac12\lVert z\rVert^2,\quad
    u_k = z W_k = (W_k^\top z)^\top,

    m \leftarrow \max(m, \ell_k),\quad s \leftarrow s\,e^{m_{old} - m} + e^{\ell_k - m},\quad
    a \leftarrow a\,e^{m_{old} - m} + e^{\ell_k - m} u_k,

and at the end :math:`\log p = m + \log s`, :math:`\nabla\log p = -a/s` — the formulas of the
mixture's eager path, :math:`-\sum_k r_k W_k^\top z_k` with :math:`r = \operatorname{softmax}_k
\ell`, summed in another order (float32 accuracy: no plain TF32, see below). The kernel reads
``x`` and writes the score and the log-density: memory traffic of ``(N, d)`` twice.

That is the default ``"dot"`` variant (:data:`KERNEL`). Its two products run as ``tl.dot`` in
``"tf32x3"`` input precision on GPUs with TF32 (compute capability 8.0 on): each float32 operand
split into a TF32 head and tail, three tensor-core products, float32 accuracy (on an H200, the
score's largest error against float64 at N = 10⁶ is 9.3e-7 relative, as with ``"ieee"``) in
2.7 ms at N = 10⁷, K = 8, d = 16, against 4.6–6.7 ms for ``"ieee"`` (its best tilings). Older
GPUs take ``"ieee"``.

The ``"precision"`` variant does half the multiply-adds and no ``tl.dot``: with the precisions
:math:`P_k = W_k^\top W_k` and :math:`b_k = -P_k m_k` (:meth:`GaussianMixture.precision_form`,
formed in float64),

.. math::
    g_k = P_k x + b_k = W_k^\top z_k,\qquad \lVert z_k\rVert^2 = (x - m_k)\cdot g_k,

one mat-vec per component, accumulated as :math:`d` broadcast multiply-adds ``g[n, k, :] +=
x[n, j] P_k[j, :]`` over a ``(rows, K, d)`` register tile (components in chunks when ``K`` is
large). On the H200 it is the slower one (18–62 ms at N = 10⁷ by tile, against 2.7 ms): each
row block reloads every :math:`P_k`. It stays for other GPUs and for timing.

It runs on CUDA float32 inputs with ``1 <= d <= 64`` (full or diagonal covariances) when no
gradient through ``x`` is needed (the kernel has no backward: a guided proposal's autograd takes
the eager path); Triton's CPU interpreter runs it too (``TRITON_INTERPRET=1``, the tests). If
the kernel fails to compile or launch, one warning line is printed and every later call with
the same :data:`KERNEL` settings takes the eager path.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from smcdiff.distributions.gaussian_mixture import GaussianMixture

__all__ = ["fused_applies", "fused_available", "fused_score_and_log_prob"]

try:  # Triton is optional: CUDA builds of torch ship it, CPU builds do not
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install
    triton = None

_FAILED: set[tuple] = set()  # the KERNEL settings whose launch failed (then the eager path)
KERNEL = {
    "variant": os.environ.get("SMCDIFF_MIXTURE_KERNEL", "dot"),
    "block": int(os.environ.get("SMCDIFF_MIXTURE_BLOCK", "64")),
    "warps": int(os.environ.get("SMCDIFF_MIXTURE_WARPS", "2")),
    "dot_precision": os.environ.get("SMCDIFF_MIXTURE_DOT_PRECISION", "auto"),
    "tile": int(os.environ.get("SMCDIFF_MIXTURE_TILE", "4096")),
}
"""Which kernel :func:`fused_score_and_log_prob` launches and how: ``"dot"`` (default: two
``tl.dot`` per component on ``block`` rows, ``warps`` warps, in ``dot_precision``: ``"auto"`` =
``"tf32x3"`` from compute capability 8.0, else ``"ieee"``) or ``"precision"`` (``tile``
elements of the ``(rows, K, d)`` register tile, ``warps`` warps); set from
``SMCDIFF_MIXTURE_KERNEL`` / ``_BLOCK`` / ``_WARPS`` / ``_DOT_PRECISION`` / ``_TILE``. The
defaults are the fastest of a sweep on an H200 (experiments/bench_fk_step.py)."""
MAX_DIM = 64
"""The largest dimension the fused kernel takes (a row block's residuals live in registers)."""


if triton is not None:

    @triton.jit
    def _mixture_kernel(
        x_ptr, w_ptr, c_ptr, lnorm_ptr, score_ptr, logp_ptr, N, D, K,
        WANT_SCORE: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, DP)
        in_rows, in_cols = rows < N, cols < D
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        xmask = in_rows[:, None] & in_cols[None, :]
        x = tl.load(x_ptr + offs, mask=xmask, other=0.0)
        wmask = in_cols[:, None] & in_cols[None, :]
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        acc = tl.zeros((BLOCK_N, DP), tl.float32)
        for k in range(K):
            w = tl.load(w_ptr + k * D * D + cols[:, None] * D + cols[None, :], mask=wmask,
                        other=0.0)  # fmt: skip
            c = tl.load(c_ptr + k * D + cols, mask=in_cols, other=0.0)
            z = tl.dot(x, tl.trans(w), input_precision=PREC) + c[None, :]
            ell = tl.load(lnorm_ptr + k) - 0.5 * tl.sum(z * z, axis=1)
            m_new = tl.maximum(m, ell)
            scale = tl.exp(m - m_new)
            p = tl.exp(ell - m_new)
            s = s * scale + p
            if WANT_SCORE:
                u = tl.dot(z, w, input_precision=PREC)
                acc = acc * scale[:, None] + p[:, None] * u
            m = m_new
        tl.store(logp_ptr + rows, m + tl.log(s), mask=in_rows)
        if WANT_SCORE:
            tl.store(score_ptr + offs, -acc / s[:, None], mask=xmask)

    @triton.jit
    def _precision_kernel(
        x_ptr, p_ptr, b_ptr, m_ptr, lnorm_ptr, score_ptr, logp_ptr, N, K,
        D: tl.constexpr, DP: tl.constexpr, KB: tl.constexpr, BLOCK_N: tl.constexpr,
        WANT_SCORE: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols, ks = tl.arange(0, DP), tl.arange(0, KB)
        in_rows, in_cols = rows < N, cols < D
        row_offs = rows.to(tl.int64) * D
        offs = row_offs[:, None] + cols[None, :]
        xmask = in_rows[:, None] & in_cols[None, :]
        x = tl.load(x_ptr + offs, mask=xmask, other=0.0)
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        acc = tl.zeros((BLOCK_N, DP), tl.float32)
        for k0 in range(0, K, KB):
            kk = k0 + ks
            in_k = kk < K
            kd = kk[:, None] * D + cols[None, :]
            kdmask = in_k[:, None] & in_cols[None, :]
            b = tl.load(b_ptr + kd, mask=kdmask, other=0.0)
            g = tl.zeros((BLOCK_N, KB, DP), tl.float32) + b[None, :, :]
            for j in tl.static_range(D):  # g[n, k, :] += x[n, j] P_k[j, :] (P_k symmetric)
                xj = tl.load(x_ptr + row_offs + j, mask=in_rows, other=0.0)
                pj = tl.load(p_ptr + kk[:, None] * (D * D) + j * D + cols[None, :], mask=kdmask,
                             other=0.0)  # fmt: skip
                g += xj[:, None, None] * pj[None, :, :]
            mu = tl.load(m_ptr + kd, mask=kdmask, other=0.0)
            q = tl.sum((x[:, None, :] - mu[None, :, :]) * g, axis=2)
            lnorm = tl.load(lnorm_ptr + kk, mask=in_k, other=0.0)
            ell = tl.where(in_k[None, :], lnorm[None, :] - 0.5 * q, float("-inf"))
            m_new = tl.maximum(m, tl.max(ell, axis=1))
            scale = tl.exp(m - m_new)
            p = tl.exp(ell - m_new[:, None])
            s = s * scale + tl.sum(p, axis=1)
            if WANT_SCORE:
                acc = acc * scale[:, None] + tl.sum(p[:, :, None] * g, axis=1)
            m = m_new
        tl.store(logp_ptr + rows, m + tl.log(s), mask=in_rows)
        if WANT_SCORE:
            tl.store(score_ptr + offs, -acc / s[:, None], mask=xmask)


def _dot_precision(device: torch.device) -> str:
    """``KERNEL["dot_precision"]``, ``"auto"`` resolved for ``device``: ``"tf32x3"`` where
    tensor cores take TF32 (CUDA compute capability >= 8.0), else ``"ieee"``."""
    prec = KERNEL["dot_precision"]
    if prec != "auto":
        return prec
    tf32 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    return "tf32x3" if tf32 else "ieee"


def fused_available() -> bool:
    """Whether the kernel can run: Triton imported and no earlier launch with the current
    :data:`KERNEL` settings failed."""
    return triton is not None and tuple(KERNEL.values()) not in _FAILED


def fused_applies(x: torch.Tensor, dim: int) -> bool:
    """Whether :func:`fused_score_and_log_prob` takes ``x`` ``(N, dim)`` on the fast path: Triton
    present and not failed, a CUDA float32 ``x``, ``dim <= MAX_DIM``, and no gradient wanted
    through ``x``."""
    return (
        fused_available()
        and x.is_cuda
        and x.dtype == torch.float32
        and 1 <= dim <= MAX_DIM
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def fused_score_and_log_prob(
    mixture: GaussianMixture,
    x: torch.Tensor,
    want_score: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """``(score (N, d) or None, log_p (N,))`` of ``mixture`` at ``x`` ``(N, d)`` float32, from
    the kernel named by ``KERNEL["variant"]`` (module docstring); ``None`` if it failed (warned
    once; every later call returns ``None``: the caller's eager path)."""
    x = x.contiguous()
    n, d = x.shape
    if n == 0:
        return (torch.empty_like(x) if want_score else None), x.new_empty(0)
    log_p = torch.empty(n, dtype=x.dtype, device=x.device)
    score = torch.empty_like(x) if want_score else log_p  # a placeholder pointer
    dp = max(16, triton.next_power_of_2(d))
    try:
        if KERNEL["variant"] == "dot":
            w, c, log_norm = (v.contiguous() for v in mixture.whitening())
            block = max(16, KERNEL["block"] // max(1, dp // 16))  # tl.dot: >= 16 rows
            _mixture_kernel[(triton.cdiv(n, block),)](
                x, w, c, log_norm, score, log_p, n, d, w.shape[0], WANT_SCORE=want_score,
                BLOCK_N=block, DP=dp, PREC=_dot_precision(x.device), num_warps=KERNEL["warps"],
            )  # fmt: skip
        else:
            prec, b, means, log_norm = mixture.precision_form()
            k = prec.shape[0]
            kb = min(triton.next_power_of_2(k), max(1, KERNEL["tile"] // dp))
            block = max(1, KERNEL["tile"] // (kb * dp))
            _precision_kernel[(triton.cdiv(n, block),)](
                x, prec, b, means, log_norm, score, log_p, n, k, D=d, DP=dp, KB=kb,
                BLOCK_N=block, WANT_SCORE=want_score, num_warps=KERNEL["warps"],
            )  # fmt: skip
    except Exception as err:  # compilation or launch failed: the eager path from now on
        _FAILED.add(tuple(KERNEL.values()))
        warnings.warn(f"GaussianMixture: the fused Triton score kernel failed ({err!r}); "
                      "using the eager path from now on", stacklevel=3)  # fmt: skip
        return None
    return (score if want_score else None), log_p
