r"""Gaussian mixtures :math:`p(x) = \sum_k w_k\,\mathcal N(x; m_k, \Sigma_k)` in closed form.

Densities, scores, exact samples, moments, the noised marginals of a diffusion process, the
posterior under a linear-Gaussian observation and exponential tilts by a quadratic. They are the
exact ground truth behind the closed-form tests of every sampler.

Parameters are validated and factorised once, in float64, then stored in the dtype of ``means``.
The hot path (``log_prob`` / ``score`` on many points) works through the whitening matrices
:math:`W_k = L_k^{-1}` (:math:`\Sigma_k = L_k L_k^\top`): with :math:`z_k = W_k x - W_k m_k`,

.. math::
    \log p(x) = \operatorname{logsumexp}_k\big(\log w_k - \tfrac d2\log 2\pi - \log|L_k|
    - \tfrac12\|z_k\|^2\big), \qquad
    \nabla\log p(x) = -\sum_k r_k(x)\, W_k^\top z_k,

:math:`r_k` the responsibilities: two GEMMs through the stacked :math:`W_k` ``(K d, d)`` and no
``(N, K, d, d)`` tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from smcdiff.checks import check_int, check_time
from smcdiff.errors import SMCDiffError
from smcdiff.processes.schedules import NoiseProcess

__all__ = ["Gaussian", "GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)
_NOISED_CACHE_SIZE = 4
_F64 = torch.float64


def _to64(value: Any, name: str, where: str, device: torch.device) -> torch.Tensor:
    """``value`` as a detached float64 tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
    try:
        return torch.as_tensor(value, dtype=_F64, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SMCDiffError(f"{where}: {name} cannot be read as a tensor ({e})") from e


def _check_finite(name: str, x: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise SMCDiffError(f"{where}: {name} has non-finite entries")


def _check_symmetric(name: str, x: torch.Tensor, where: str) -> torch.Tensor:
    """Raise unless ``x`` (..., d, d) is symmetric up to round-off; return its symmetric part."""
    xt = x.transpose(-1, -2)
    scale = x.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
    if not bool(((x - xt).abs() <= 1e-5 * scale).all()):
        raise SMCDiffError(f"{where}: {name} is not symmetric")
    return 0.5 * (x + xt)


def _as_time(t: float | torch.Tensor, where: str) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise SMCDiffError(
                f"{where}: t must be a scalar, got a tensor of shape {tuple(t.shape)}"
            )
        t = t.item()
    return check_time("t", t, where=where)


def _factor(cov64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scale factor and failure flags of float64 covariances, without a host sync.

    Full ``(K, d, d)``: Cholesky ``L`` with :math:`\Sigma = L L^\top`; diagonal ``(K, d)``: std.
    The flags ``(K,)`` are nonzero where the covariance is not positive definite.
    """
    if cov64.dim() == 2:
        return cov64.clamp_min(0.0).sqrt(), (cov64 <= 0).sum(-1)
    chol, info = torch.linalg.cholesky_ex(cov64)
    return chol, info


class GaussianMixture:
    r""":math:`p(x) = \sum_{k=1}^K w_k\,\mathcal N(x; m_k, \Sigma_k)`, :math:`x \in \mathbb R^d`.

    Args:
        weights: ``(K,)`` non-negative, not all zero; normalised to sum to one.
        means: ``(K, d)``. Fixes dtype and device (float32 on CPU for non-tensors).
        covs: ``(K, d, d)`` symmetric positive-definite covariances, or ``(K, d)`` diagonal
            variances (kept diagonal: cheaper elementwise scores, diagonal ``noised``).

    Parameters are constants (detached from any autograd graph); outputs are differentiable in
    ``x``. Raises :class:`SMCDiffError` naming the offending argument.
    """

    def __init__(self, weights: Any, means: Any, covs: Any):
        where = "GaussianMixture"
        if isinstance(means, torch.Tensor):
            dtype = means.dtype if means.is_floating_point() else torch.float32
            device = means.device
        else:
            dtype, device = torch.float32, torch.device("cpu")
        m64 = _to64(means, "means", where, device)
        if m64.dim() != 2 or m64.shape[0] < 1 or m64.shape[1] < 1:
            raise SMCDiffError(f"{where}: means has shape {tuple(m64.shape)}, expected (K, d)")
        k, d = m64.shape
        _check_finite("means", m64, where)

        w64 = _to64(weights, "weights", where, device)
        if w64.shape != (k,):
            raise SMCDiffError(
                f"{where}: weights has shape {tuple(w64.shape)}, expected ({k},) "
                f"(one per row of means {tuple(m64.shape)})"
            )
        if not bool(torch.isfinite(w64).all() & (w64 >= 0).all() & (w64.sum() > 0)):
            raise SMCDiffError(
                f"{where}: weights must be finite, non-negative, not all zero; got {w64.tolist()}"
            )

        c64 = _to64(covs, "covs", where, device)
        if c64.shape not in ((k, d, d), (k, d)):
            raise SMCDiffError(
                f"{where}: covs has shape {tuple(c64.shape)}; for means of shape ({k}, {d}) "
                f"expected ({k}, {d}, {d}) (full) or ({k}, {d}) (diagonal variances)"
            )
        _check_finite("covs", c64, where)
        if c64.dim() == 3:
            c64 = _check_symmetric("covs", c64, where)
        scale, bad = _factor(c64)
        if bool(bad.any()):
            kind = "positive" if c64.dim() == 2 else "positive definite"
            idx = torch.nonzero(bad).flatten().tolist()
            raise SMCDiffError(f"{where}: covs of components {idx} are not {kind}")
        self._set(w64 / w64.sum(), m64, c64, scale, dtype)

    @classmethod
    def _build(
        cls,
        w64: torch.Tensor,
        m64: torch.Tensor,
        c64: torch.Tensor,
        dtype: torch.dtype,
        where: str | None = None,
    ) -> GaussianMixture:
        """From float64 parameters already known to be valid; ``where`` set checks that the
        covariances are positive definite (one host sync), ``None`` skips it (no sync)."""
        scale, bad = _factor(c64)
        if where is not None and bool(bad.any()):
            raise SMCDiffError(
                f"{where}: the resulting covariances are not positive definite in float64 "
                f"(components {torch.nonzero(bad).flatten().tolist()})"
            )
        obj = cls.__new__(cls)
        obj._set(w64, m64, c64, scale, dtype)
        return obj

    def _set(
        self,
        w64: torch.Tensor,
        m64: torch.Tensor,
        c64: torch.Tensor,
        scale64: torch.Tensor,
        dtype: torch.dtype,
    ) -> None:
        self._w64, self._m64, self._c64, self._scale64 = w64, m64, c64, scale64
        self._diag = c64.dim() == 2
        k, d = m64.shape
        if self._diag:
            inv_std = 1.0 / scale64
            half_log_det = scale64.log().sum(-1)
            self._inv_std = inv_std.to(dtype)
            self._neg_c = -(inv_std * m64).to(dtype)  # (K, d)
            prec64 = torch.diag_embed(inv_std.square())
        else:
            eye = torch.eye(d, dtype=_F64, device=m64.device).expand(k, d, d)
            whiten = torch.linalg.solve_triangular(scale64, eye, upper=False)  # W_k = L_k^{-1}
            half_log_det = scale64.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            self._w_stack = whiten.reshape(k * d, d).to(dtype)  # rows of block k: W_k
            self._neg_c = -(whiten @ m64.unsqueeze(-1)).reshape(k * d).to(dtype)  # (K d,): -W_k m_k
            prec64 = whiten.mT @ whiten  # P_k = W_k^T W_k = Sigma_k^{-1}
        prec64 = 0.5 * (prec64 + prec64.mT)  # exactly symmetric (the fused kernel reads rows)
        self._prec = prec64.to(dtype)
        self._prec_b = -(prec64 @ m64.unsqueeze(-1)).squeeze(-1).to(dtype)  # b_k = -P_k m_k
        self._log_norm = (w64.log() - 0.5 * d * _LOG_2PI - half_log_det).to(dtype)
        self._means = m64.to(dtype)
        self._scale = scale64.to(dtype)
        self._noised_cache: dict[tuple[int, float], tuple[NoiseProcess, GaussianMixture]] = {}

    # ---------------------------------------------------------------- attributes
    @property
    def n_components(self) -> int:
        return self._m64.shape[0]

    @property
    def dim(self) -> int:
        return self._m64.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._means.dtype

    @property
    def device(self) -> torch.device:
        return self._means.device

    @property
    def is_diagonal(self) -> bool:
        """Whether the covariances are stored as ``(K, d)`` variances."""
        return self._diag

    @property
    def weights(self) -> torch.Tensor:
        """``(K,)``, summing to one."""
        return self._w64.to(self.dtype)

    @property
    def means(self) -> torch.Tensor:
        """``(K, d)``."""
        return self._means

    @property
    def covs(self) -> torch.Tensor:
        """``(K, d, d)`` full covariances (diagonal ones expanded)."""
        return self._full_c64().to(self.dtype)

    def _full_c64(self) -> torch.Tensor:
        return torch.diag_embed(self._c64) if self._diag else self._c64

    def _full_scale64(self) -> torch.Tensor:
        return torch.diag_embed(self._scale64) if self._diag else self._scale64

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """A copy on ``device`` / in ``dtype``, derived again from the float64 parameters."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if not dtype.is_floating_point:
            raise SMCDiffError(f"GaussianMixture.to: dtype must be floating point, got {dtype}")
        obj = type(self).__new__(type(self))
        p = (self._w64, self._m64, self._c64, self._scale64)
        obj._set(*(v.to(device) for v in p), dtype)
        return obj

    def __repr__(self) -> str:
        cov = "diag" if self._diag else "full"
        return (
            f"GaussianMixture(n_components={self.n_components}, dim={self.dim}, covs={cov}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ---------------------------------------------------------------- densities and scores
    def _rows(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """Check ``x`` (..., d) and flatten it to ``(N, d)``."""
        if not isinstance(x, torch.Tensor):
            raise SMCDiffError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise SMCDiffError(f"{where}: x has shape {tuple(x.shape)}, expected (..., {self.dim})")
        if x.device != self.device:
            raise SMCDiffError(
                f"{where}: x is on {x.device} but the mixture is on {self.device}; "
                f"move one with .to(...)"
            )
        if x.dtype != self.dtype:
            raise SMCDiffError(
                f"{where}: x has dtype {x.dtype} but the mixture has {self.dtype}; "
                f"convert one with .to(dtype=...)"
            )
        return x.reshape(-1, self.dim)

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""``(W, c, log_norm)`` in the mixture's dtype: the whitening matrices
        :math:`W_k = L_k^{-1}` ``(K, d, d)`` (diagonal ones expanded), :math:`c_k = -W_k m_k`
        ``(K, d)`` and :math:`\log w_k - \tfrac d2\log 2\pi - \log|L_k|` ``(K,)``: with
        :math:`z_k = W_k x + c_k`, :math:`\log w_k\mathcal N(x; m_k, \Sigma_k) =
        \text{log\_norm}_k - \tfrac12\lVert z_k\rVert^2`."""
        k, d = self.n_components, self.dim
        if self._diag:
            return torch.diag_embed(self._inv_std), self._neg_c, self._log_norm
        return self._w_stack.view(k, d, d), self._neg_c.view(k, d), self._log_norm

    def precision_form(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""``(P, b, m, log_norm)`` in the mixture's dtype (from float64): the precisions
        :math:`P_k = \Sigma_k^{-1}` ``(K, d, d)``, :math:`b_k = -P_k m_k` ``(K, d)``, the means
        ``(K, d)`` and ``log_norm`` of :meth:`whitening`: with :math:`g_k = P_k x + b_k`,
        :math:`\log w_k\mathcal N(x; m_k, \Sigma_k) = \text{log\_norm}_k - \tfrac12 (x -
        m_k)\cdot g_k` and :math:`\nabla_x` of it is :math:`-g_k`."""
        return self._prec, self._prec_b, self._means, self._log_norm

    def _whitened(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, d) -> component log-terms ``(N, K)`` (with log weights), ``z`` (N, K, d)."""
        n, k, d = x.shape[0], self.n_components, self.dim
        if self._diag:
            z = torch.addcmul(self._neg_c, x.unsqueeze(-2), self._inv_std)
        else:
            z = torch.addmm(self._neg_c, x, self._w_stack.T).view(n, k, d)
        return self._log_norm - 0.5 * z.square().sum(-1), z

    def _unwhiten_sum(self, rz: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_k W_k^\top (rz)_k`: ``(N, K, d)`` -> ``(N, d)``."""
        if self._diag:
            return (rz * self._inv_std).sum(-2)
        return rz.reshape(rz.shape[0], -1) @ self._w_stack

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log w_k + \log\mathcal N(x; m_k, \Sigma_k)`: ``(..., d)`` -> ``(..., K)``."""
        flat = self._rows(x, "GaussianMixture.component_log_prob")
        return self._whitened(flat)[0].reshape(*x.shape[:-1], self.n_components)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x)`: ``(..., d)`` -> ``(...)``."""
        flat = self._rows(x, "GaussianMixture.log_prob")
        return torch.logsumexp(self._whitened(flat)[0], dim=-1).reshape(x.shape[:-1])

    def score_and_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(\nabla_x\log p(x), \log p(x))`: ``(..., d)`` -> ``((..., d), (...))``.

        :math:`\nabla\log p = -\sum_k r_k W_k^\top z_k`, :math:`r = \operatorname{softmax}_k`
        of the component log-terms. Differentiable in ``x``.
        """
        flat = self._rows(x, "GaussianMixture.score_and_log_prob")
        score, log_p = self._score_and_log_prob(flat)
        return score.reshape(x.shape), log_p.reshape(x.shape[:-1])

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x \log p(x)`: ``(..., d)`` -> ``(..., d)``."""
        return self._score_and_log_prob(self._rows(x, "GaussianMixture.score"))[0].reshape(x.shape)

    def _score_and_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_terms, z = self._whitened(x)
        log_p = torch.logsumexp(log_terms, dim=-1)
        resp = torch.exp(log_terms - log_p.unsqueeze(-1))
        return -self._unwhiten_sum(resp.unsqueeze(-1) * z), log_p

    # ---------------------------------------------------------------- sampling and moments
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        return_components: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples ``(n, d)`` (and their component indices ``(n,)`` int64)."""
        n = check_int("n", n, 1, where="GaussianMixture.sample")
        comp = torch.multinomial(self._w64, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        x = self._means[comp]
        if self._diag:
            x = x + self._scale[comp] * eps
        else:  # one (n, d) GEMM per component instead of gathering (n, d, d) factors
            for k in range(self.n_components):
                x = torch.where((comp == k).unsqueeze(-1), x + eps @ self._scale[k].T, x)
        return (x, comp) if return_components else x

    def mean(self) -> torch.Tensor:
        r""":math:`\mu = \sum_k w_k m_k`, ``(d,)``."""
        return (self._w64 @ self._m64).to(self.dtype)

    def covariance(self) -> torch.Tensor:
        r""":math:`\sum_k w_k(\Sigma_k + m_k m_k^\top) - \mu\mu^\top`, ``(d, d)``."""
        mu = self._w64 @ self._m64
        second = torch.einsum("k,kij->ij", self._w64, self._full_c64())
        second = second + torch.einsum("k,ki,kj->ij", self._w64, self._m64, self._m64)
        return (second - torch.outer(mu, mu)).to(self.dtype)

    # ---------------------------------------------------------------- transformations
    def noised(self, process: NoiseProcess, t: float | torch.Tensor) -> GaussianMixture:
        r"""Law of :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, :math:`x_0 \sim p`:

        :math:`p_t = \sum_k w_k \mathcal N(\alpha_t m_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)`.
        The last few results are cached by ``(process, t)``; building one costs no host sync.
        """
        where = "GaussianMixture.noised"
        if not isinstance(process, NoiseProcess):
            raise SMCDiffError(
                f"{where}: process must be a NoiseProcess, got {type(process).__name__}"
            )
        t = _as_time(t, where)
        key = (id(process), t)
        hit = self._noised_cache.get(key)
        if hit is not None and hit[0] is process:
            return hit[1]
        a, s = float(process.alpha(t)), float(process.sigma(t))
        if self._diag:
            cov = a * a * self._c64 + s * s
        else:
            eye = torch.eye(self.dim, dtype=_F64, device=self._c64.device)
            cov = a * a * self._c64 + s * s * eye
        out = self._build(self._w64, a * self._m64, cov, self.dtype)
        if len(self._noised_cache) >= _NOISED_CACHE_SIZE:
            del self._noised_cache[next(iter(self._noised_cache))]
        self._noised_cache[key] = (process, out)
        return out

    def posterior(
        self,
        A: Any,
        y: Any,
        noise_std: float | None = None,
        *,
        noise_cov: Any = None,
    ) -> tuple[GaussianMixture, torch.Tensor]:
        r"""Condition on :math:`y = A x + e`, :math:`e \sim \mathcal N(0, R)`.

        Args:
            A: ``(m, d)``. y: ``(m,)``.
            noise_std: :math:`R = \text{noise\_std}^2 I`; or instead
            noise_cov: ``(m, m)`` symmetric positive-definite :math:`R`.

        Per component, with :math:`S_k = A\Sigma_k A^\top + R` and
        :math:`G_k = \Sigma_k A^\top S_k^{-1}`: mean :math:`m_k + G_k(y - A m_k)`, covariance
        :math:`\Sigma_k - G_k A \Sigma_k`, weight :math:`\propto w_k\mathcal N(y; A m_k, S_k)`.
        Computed in float64.

        Returns:
            ``(posterior, log_evidence)``, :math:`\log p(y) = \operatorname{logsumexp}_k(\log w_k
            + \log\mathcal N(y; A m_k, S_k))` a float64 0-d tensor.
        """
        where = "GaussianMixture.posterior"
        dev, d = self._m64.device, self.dim
        A = _to64(A, "A", where, dev)
        if A.dim() != 2 or A.shape[1] != d or A.shape[0] < 1:
            raise SMCDiffError(f"{where}: A has shape {tuple(A.shape)}, expected (m, {d})")
        m_obs = A.shape[0]
        y = _to64(y, "y", where, dev)
        if y.shape != (m_obs,):
            raise SMCDiffError(
                f"{where}: y has shape {tuple(y.shape)}, expected ({m_obs},) to match A "
                f"{tuple(A.shape)}"
            )
        _check_finite("A", A, where)
        _check_finite("y", y, where)
        R = self._noise_cov(noise_std, noise_cov, m_obs, where)

        cov = self._full_c64()
        a_cov = A @ cov  # (K, m, d)
        s_cov = a_cov @ A.T + R
        s_chol = torch.linalg.cholesky(0.5 * (s_cov + s_cov.transpose(-1, -2)))
        resid = y - self._m64 @ A.T  # (K, m)
        gain_t = torch.cholesky_solve(a_cov, s_chol)  # S_k^{-1} A Σ_k = G_k^T, (K, m, d)
        post_m = self._m64 + (gain_t.transpose(-1, -2) @ resid.unsqueeze(-1)).squeeze(-1)
        post_c = cov - gain_t.transpose(-1, -2) @ a_cov
        post_c = 0.5 * (post_c + post_c.transpose(-1, -2))

        white = torch.linalg.solve_triangular(s_chol, resid.unsqueeze(-1), upper=False)
        half_log_det = s_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_lik = -0.5 * m_obs * _LOG_2PI - half_log_det - 0.5 * white.squeeze(-1).square().sum(-1)
        logits = self._w64.log() + log_lik
        log_evidence = torch.logsumexp(logits, dim=0)
        post_w = torch.exp(logits - log_evidence)
        return self._build(post_w, post_m, post_c, self.dtype, where), log_evidence

    def _noise_cov(self, noise_std: Any, noise_cov: Any, m_obs: int, where: str) -> torch.Tensor:
        dev = self._m64.device
        if (noise_std is None) == (noise_cov is None):
            raise SMCDiffError(
                f"{where}: give exactly one of noise_std (the observation noise std, a float) "
                f"or noise_cov (an ({m_obs}, {m_obs}) covariance)"
            )
        if noise_std is not None:
            std = _to64(noise_std, "noise_std", where, dev)
            if std.numel() != 1 or not bool(torch.isfinite(std).all() & (std > 0).all()):
                raise SMCDiffError(
                    f"{where}: noise_std must be a positive finite scalar (use noise_cov for a "
                    f"matrix), got {noise_std!r}"
                )
            return float(std) ** 2 * torch.eye(m_obs, dtype=_F64, device=dev)
        R = _to64(noise_cov, "noise_cov", where, dev)
        if R.shape != (m_obs, m_obs):
            raise SMCDiffError(
                f"{where}: noise_cov has shape {tuple(R.shape)}, expected ({m_obs}, {m_obs})"
            )
        _check_finite("noise_cov", R, where)
        R = _check_symmetric("noise_cov", R, where)
        if int(torch.linalg.cholesky_ex(R).info) != 0:
            raise SMCDiffError(f"{where}: noise_cov is not positive definite")
        return R

    def tilt(
        self, b: Any = None, Q: Any = None, beta: float = 1.0
    ) -> tuple[GaussianMixture, torch.Tensor]:
        r"""The tilted mixture :math:`\tilde p(x) \propto p(x)\,e^{\beta(b^\top x - x^\top Q x/2)}`.

        Args:
            b: ``(d,)`` or ``None`` (zero). Q: ``(d, d)`` symmetric or ``None`` (zero); the tilted
                precisions :math:`\Sigma_k^{-1} + \beta Q` must be positive definite.
            beta: scalar inverse temperature.

        Per component, :math:`\tilde\Sigma_k = (\Sigma_k^{-1} + \beta Q)^{-1}`,
        :math:`\tilde m_k = m_k + \beta\tilde\Sigma_k(b - Q m_k)`, weight :math:`\propto w_k Z_k`,
        :math:`Z_k = \mathbb E_{\mathcal N(m_k,\Sigma_k)}[e^{\beta(b^\top x - x^\top Qx/2)}]`.
        With ``Q=None`` diagonal covariances stay diagonal. Computed in float64.

        Returns:
            ``(tilted, log_normalizer)``, :math:`\log\mathbb E_p[\exp(\beta(b^\top x - \tfrac12
            x^\top Q x))] = \operatorname{logsumexp}_k(\log w_k + \log Z_k)`, float64 0-d.
        """
        where = "GaussianMixture.tilt"
        dev, d = self._m64.device, self.dim
        beta_t = _to64(beta, "beta", where, dev)
        if beta_t.numel() != 1 or not bool(torch.isfinite(beta_t).all()):
            raise SMCDiffError(f"{where}: beta must be a finite scalar, got {beta!r}")
        beta = float(beta_t)
        m = self._m64
        b = torch.zeros(d, dtype=_F64, device=dev) if b is None else _to64(b, "b", where, dev)
        if b.shape != (d,):
            raise SMCDiffError(f"{where}: b has shape {tuple(b.shape)}, expected ({d},)")
        _check_finite("b", b, where)

        if Q is None:  # N(m, Σ) e^{β bᵀx} = e^{β bᵀm + β²bᵀΣb/2} N(m + βΣb, Σ)
            cov_b = self._c64 * b if self._diag else self._c64 @ b
            new_m = m + beta * cov_b
            new_c = self._c64
            log_z = beta * (m @ b) + 0.5 * beta * beta * (cov_b @ b)
        else:
            Q = _to64(Q, "Q", where, dev)
            if Q.shape != (d, d):
                raise SMCDiffError(f"{where}: Q has shape {tuple(Q.shape)}, expected ({d}, {d})")
            _check_finite("Q", Q, where)
            Q = _check_symmetric("Q", Q, where)
            # Σ_k = L Lᵀ, M = I + β LᵀQL = Lm Lmᵀ  =>  Σ̃ = L M⁻¹ Lᵀ = VᵀV with V = Lm⁻¹Lᵀ
            chol = self._full_scale64()
            eye = torch.eye(d, dtype=_F64, device=dev)
            mid = eye + beta * chol.transpose(-1, -2) @ Q @ chol
            mid_chol, info = torch.linalg.cholesky_ex(0.5 * (mid + mid.transpose(-1, -2)))
            if bool((info != 0).any()):
                raise SMCDiffError(
                    f"{where}: the tilted precision Σ_k⁻¹ + beta·Q is not positive definite "
                    f"(beta={beta}); Q must keep it so (e.g. Q positive semi-definite, beta ≥ 0)"
                )
            v = torch.linalg.solve_triangular(mid_chol, chol.transpose(-1, -2), upper=False)
            new_c = v.transpose(-1, -2) @ v
            new_m = m + beta * (new_c @ (b - m @ Q).unsqueeze(-1)).squeeze(-1)
            # log Z_k = f(m̃) − ½(m̃−m)ᵀΣ⁻¹(m̃−m) − ½log|M|, with Σ⁻¹(m̃−m) = β(b − Q m̃)
            qm = new_m @ Q
            log_z = (
                beta * (new_m @ b)
                - 0.5 * beta * (qm * new_m).sum(-1)
                - 0.5 * beta * ((new_m - m) * (b - qm)).sum(-1)
                - mid_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            )
        logits = self._w64.log() + log_z
        log_normalizer = torch.logsumexp(logits, dim=0)
        new_w = torch.exp(logits - log_normalizer)
        return self._build(new_w, new_m, new_c, self.dtype, where), log_normalizer


def Gaussian(mean: Any, cov: Any) -> GaussianMixture:
    r""":math:`\mathcal N(\text{mean}, \text{cov})` as a one-component :class:`GaussianMixture`.

    ``mean`` ``(d,)``; ``cov`` ``(d, d)`` full or ``(d,)`` diagonal variances.
    """
    if isinstance(mean, torch.Tensor):
        mean = mean.detach()
    else:
        mean = torch.as_tensor(mean, dtype=torch.float32)
    if mean.dim() != 1:
        raise SMCDiffError(f"Gaussian: mean has shape {tuple(mean.shape)}, expected (d,)")
    cov = _to64(cov, "cov", "Gaussian", mean.device)
    if cov.shape not in ((mean.shape[0],), (mean.shape[0], mean.shape[0])):
        d = mean.shape[0]
        raise SMCDiffError(
            f"Gaussian: cov has shape {tuple(cov.shape)}, expected ({d}, {d}) or ({d},)"
        )
    return GaussianMixture(torch.ones(1, dtype=torch.float64), mean.unsqueeze(0), cov.unsqueeze(0))
