r"""Bayesian logistic regression (``logreg_breast_cancer``): a smooth, unimodal, correlated
posterior without a closed form.

Data :math:`(a_i, y_i)_{i\le n}`, :math:`y_i \in \{0, 1\}`; design :math:`A` (rows :math:`a_i`,
features standardised to mean 0 and variance 1 if ``standardize``, then a column of ones if
``intercept``); prior :math:`\theta \sim \mathcal N(0, s^2 I_D)`, ``s = prior_std``:

.. math::
    \log\tilde\pi(\theta) = \sum_i \big[y_i\,a_i^\top\theta - \log(1 + e^{a_i^\top\theta})\big]
    - \frac{\|\theta\|^2}{2s^2} - \frac D2\log(2\pi s^2),

so ``exp(log_prob)`` integrates to the evidence :math:`p(y \mid A)`. Batched over particles with
one ``(N, D) @ (D, n)`` matmul. The default data set is scikit-learn's breast-cancer data
(569 cases, 30 features: D = 31).

Ground truth: no closed form (``log_z = None``).
:meth:`LogisticRegression.laplace` gives the mode (Newton in float64; the log posterior is
strictly concave), the Laplace covariance :math:`(-\nabla^2\log\tilde\pi)^{-1}` and the Laplace
evidence; :func:`smcdiff_targets.particles.reference_samples` gives a long-MCMC reference set
(HMC in coordinates whitened by the Laplace covariance, :math:`\theta = m + Lz`: an exact,
affine change of variables), from chains started over-dispersed around the mode.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smcdiff.checks import check_shape
from smcdiff.errors import SMCDiffError

__all__ = ["LaplaceApprox", "LogisticRegression", "load_dataset"]

_LOG_2PI = math.log(2.0 * math.pi)
_F64 = torch.float64


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, p), labels (n,) in {0, 1})`` of a named data set (``"breast_cancer"``),
    from scikit-learn, imported here so the package does not need it otherwise."""
    if name != "breast_cancer":
        raise SMCDiffError(f"LogisticRegression: unknown dataset {name!r}; known: 'breast_cancer'")
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SMCDiffError(
            "LogisticRegression(dataset='breast_cancer') needs scikit-learn: "
            "pip install scikit-learn (or pass dataset=(features, labels))"
        ) from err
    features, labels = load_breast_cancer(return_X_y=True)
    return np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.float64)


@dataclass(frozen=True)
class LaplaceApprox:
    r"""Laplace approximation :math:`\mathcal N(\hat\theta, \Sigma)`, float64 on the CPU.

    ``mean`` :math:`\hat\theta` ``(D,)``, the posterior mode; ``cov``
    :math:`\Sigma = H^{-1}` ``(D, D)`` with :math:`H = -\nabla^2\log\tilde\pi(\hat\theta)
    = A^\top W A + I/s^2`, :math:`W = \mathrm{diag}(p_i(1 - p_i))`; ``log_z``
    :math:`= \log\tilde\pi(\hat\theta) + \frac D2\log 2\pi - \frac12\log\det H`;
    ``grad_norm`` :math:`\|\nabla\log\tilde\pi(\hat\theta)\|` at exit; ``n_iter`` Newton steps.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    log_z: float
    grad_norm: float
    n_iter: int


class LogisticRegression:
    r"""Bayesian logistic regression posterior (module docstring), a :class:`smcdiff.Target`.

    ``dataset``: ``"breast_cancer"`` (scikit-learn, imported lazily) or a pair
    ``(features (n, p), labels (n,))`` of arrays or tensors with labels in {0, 1}.
    ``log_prob`` computes in ``theta``'s dtype; hold the data in that dtype and on that device
    (constructor or ``to``) to avoid a conversion per call.
    """

    log_z = None

    def __init__(
        self,
        dataset: str | tuple[Any, Any] = "breast_cancer",
        prior_std: float = 1.0,
        standardize: bool = True,
        intercept: bool = True,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not (math.isfinite(prior_std) and prior_std > 0):
            raise SMCDiffError(f"LogisticRegression: prior_std must be > 0, got {prior_std!r}")
        if isinstance(dataset, str):
            features, labels = load_dataset(dataset)
            tag = dataset
        else:
            features, labels = (np.asarray(torch.as_tensor(a).cpu(), np.float64) for a in dataset)
            digest = hashlib.sha1(features.tobytes() + labels.tobytes()).hexdigest()[:10]
            tag = f"custom{digest}"  # names the data in reference-set cache keys
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise SMCDiffError(
                f"LogisticRegression: need features (n, p) and labels (n,), got "
                f"{features.shape} and {labels.shape}"
            )
        if not np.isin(labels, (0.0, 1.0)).all():
            raise SMCDiffError("LogisticRegression: labels must be 0 or 1")
        if standardize:
            sd = features.std(0)
            if (sd == 0).any():
                raise SMCDiffError("LogisticRegression: a feature is constant; cannot standardize")
            features = (features - features.mean(0)) / sd
        if intercept:
            features = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)
        self.features = torch.as_tensor(features, dtype=dtype, device=device)
        self.labels = torch.as_tensor(labels, dtype=dtype, device=device)
        self.prior_std = float(prior_std)
        self.n_data, self.dim = self.features.shape
        suffix = ("" if standardize else "_raw") + ("" if intercept else "_noint")
        self.name = f"logreg_{tag}_s{self.prior_std:g}{suffix}"
        self.reference = {
            "kernel": "hmc",
            "n_leapfrog": 3,
            "n_chains": 200,
            "n_warmup": 500,
            "thin": 10,
            "step_size": 0.1,
            "init_scale": 2.0,
        }
        self._laplace: LaplaceApprox | None = None

    def __repr__(self) -> str:
        return f"LogisticRegression({self.name!r}, n={self.n_data}, dim={self.dim})"

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LogisticRegression:
        """A copy with the data on ``device`` / in ``dtype`` (the Laplace cache is shared)."""
        new = object.__new__(LogisticRegression)
        new.__dict__.update(self.__dict__)
        new.features = self.features.to(device=device, dtype=dtype)
        new.labels = self.labels.to(device=device, dtype=dtype)
        new.reference = dict(self.reference)
        return new

    # ----------------------------------------------------------------- density
    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_i y_i\eta_i - \mathrm{softplus}(\eta_i)`, :math:`\eta = A\theta`;
        ``(N, D) -> (N,)``."""
        check_shape("theta", theta, (None, self.dim), where="LogisticRegression.log_likelihood")
        eta = theta @ self.features.to(theta).T  # (N, n); .to is a no-op in the target's dtype
        return (self.labels.to(theta) * eta - torch.nn.functional.softplus(eta)).sum(-1)

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\mathcal N(\theta; 0, s^2 I)`, ``(N, D) -> (N,)``."""
        s2 = self.prior_std**2
        return -0.5 * theta.square().sum(-1) / s2 - 0.5 * self.dim * (_LOG_2PI + math.log(s2))

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """Unnormalised log posterior (log likelihood + normalised log prior), ``(N, D) -> (N,)``."""
        return self.log_likelihood(theta) + self.log_prior(theta)

    # ----------------------------------------------------------------- Laplace
    def laplace(self, tol: float = 1e-10, max_iter: int = 100) -> LaplaceApprox:
        r"""Laplace approximation (cached): Newton's method from :math:`\theta = 0`,
        :math:`\theta \leftarrow \theta + H^{-1}g`, in float64 on the CPU, until
        :math:`\|g\| <` ``tol`` (quadratic convergence; the objective is strictly concave).
        Raises :class:`SMCDiffError` if it has not converged after ``max_iter`` steps."""
        if self._laplace is not None:
            return self._laplace
        a = self.features.detach().to("cpu", _F64)
        y = self.labels.detach().to("cpu", _F64)
        prec = 1.0 / self.prior_std**2
        theta = torch.zeros(self.dim, dtype=_F64)
        eye = torch.eye(self.dim, dtype=_F64)
        for it in range(max_iter + 1):
            p = torch.sigmoid(a @ theta)
            grad = a.T @ (y - p) - prec * theta
            hess = (a.T * (p * (1 - p))) @ a + prec * eye  # = -Hessian of log_prob
            gnorm = float(grad.norm())
            if gnorm < tol:
                break
            if it == max_iter:
                raise SMCDiffError(
                    f"LogisticRegression.laplace: Newton did not converge in {max_iter} steps "
                    f"(|grad| = {gnorm:.3g})"
                )
            theta = theta + torch.linalg.solve(hess, grad)
        chol = torch.linalg.cholesky(hess)
        log_det = 2.0 * float(torch.log(torch.diagonal(chol)).sum())
        log_peak = float(self.to("cpu", _F64).log_prob(theta[None])[0])
        self._laplace = LaplaceApprox(
            mean=theta,
            cov=torch.cholesky_inverse(chol),
            log_z=log_peak + 0.5 * self.dim * _LOG_2PI - 0.5 * log_det,
            grad_norm=gnorm,
            n_iter=it,
        )
        return self._laplace

    # ----------------------------------------------------------------- reference-set hooks
    def reference_affine(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(m, L)``: the chains run on :math:`z` with :math:`\theta = m + Lz`,
        :math:`LL^\top` the Laplace covariance (an exact whitening of the Gaussian part)."""
        lap = self.laplace()
        chol = torch.linalg.cholesky(lap.cov)
        return lap.mean.to(device, dtype), chol.to(device, dtype)

    def reference_init(
        self,
        n_chains: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
        settings: dict[str, Any],
    ) -> torch.Tensor:
        """Over-dispersed starts ``(n_chains, D)``: :math:`m + c Lz`, ``c = init_scale``."""
        m, chol = self.reference_affine(device, dtype)
        z = torch.randn(n_chains, self.dim, generator=generator, device=device, dtype=dtype)
        return m + float(settings.get("init_scale", 2.0)) * z @ chol.T

    def reference_statistics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summaries for R-hat: every coefficient ``(N, D)`` (the report keeps the worst)."""
        return {"coefficients": theta}
