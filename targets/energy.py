r"""Energy-defined benchmark targets with their ground truth (BENCHMARKS.md, "Pin the variant").

Each class has ``name``, ``dim`` and a batched, differentiable ``log_prob(x)``: ``(N, dim) -> (N,)``
(in the dtype of ``x``; :class:`Gmm40Fab` wants its own, set by ``.to``), so it is a
:class:`smcdiff.target.Target`. ``log_z`` is the log normaliser of *that* ``log_prob`` (``0.0``
where ``log_prob`` is normalised), and ``sample(n, generator)`` draws ``n`` exact samples
``(n, dim)``.

- :class:`Gmm40Fab` (``gmm40_fab``, d = 2): 40 equal-weight :math:`\mathcal N(m_k, 1.3133^2 I_2)`,
  normalised, ``log_z = 0``;
- :class:`Funnel` (``funnel10``): :math:`\mathcal N(x_0; 0, 9)\prod_i\mathcal N(x_i; 0, e^{x_0})`,
  normalised, ``log_z = 0``;
- :class:`ManyWell` (``manywell32``): :math:`-\sum_{pairs}(x_1^4 - 6x_1^2 - 0.5x_1 + 0.5x_2^2)`,
  ``log_z = 164.69568``;
- :class:`MW5` (``mw5``): :math:`-\sum_{i\le5}(x_i^2 - 4)^2`, ``log_z = -0.54106``.

The 1-D quartic wells of :class:`ManyWell` and :class:`MW5` are integrated by quadrature
(``scipy.integrate.quad``, relative error < 1e-12) and sampled exactly by vectorised rejection
from a two-Gaussian envelope whose bound is the exact maximum of a polynomial (see
:class:`QuarticWell`).
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from importlib import resources

import numpy as np
import torch
from numpy.polynomial import Polynomial

from smcdiff import GaussianMixture
from smcdiff.checks import check_int, check_shape
from smcdiff.errors import SMCDiffError

__all__ = ["MW5", "Funnel", "Gmm40Fab", "ManyWell", "load_gmm40_fab_means"]

_LOG_2PI = math.log(2.0 * math.pi)
_F64 = torch.float64


def check_x(x: torch.Tensor, dim: int, where: str) -> None:
    """``x`` must be ``(N, dim)``."""
    check_shape("x", x, (None, dim), where=where)


def check_n(n: int, where: str) -> int:
    """A sample count: an int >= 1 (NumPy ints accepted)."""
    return check_int("n", n, 1, where=where)


# --------------------------------------------------------------------------- gmm40_fab
def load_gmm40_fab_means() -> torch.Tensor:
    """The 40 means ``(40, 2)`` float64 of ``gmm40_fab``, from the shipped ``data/`` JSON.

    Built once by FAB's construction ``torch.manual_seed(0); (torch.rand(40, 2) - 0.5) * 80`` and
    stored as data, so the variant never depends on an RNG version.
    """
    text = resources.files("smcdiff_targets").joinpath("data/gmm40_fab_means.json").read_text()
    return torch.tensor(json.loads(text)["means"], dtype=_F64)


class Gmm40Fab:
    r"""``gmm40_fab``: :math:`\pi(x) = \frac1{40}\sum_k\mathcal N(x; m_k, \sigma^2 I_2)`, ``d = 2``.

    Means :math:`m_k` from :func:`load_gmm40_fab_means` (in :math:`[-40, 40]^2`),
    :math:`\sigma = \operatorname{softplus}(1) = \log(1 + e) = 1.3133`. ``log_prob`` is normalised,
    so ``log_z = 0``. Built on :class:`smcdiff.GaussianMixture` (``self.mixture``), which gives
    the exact sampler and closed-form scores.
    """

    name = "gmm40_fab"
    dim = 2
    n_modes = 40
    std = math.log1p(math.e)
    log_z = 0.0

    def __init__(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        means = load_gmm40_fab_means()
        variances = torch.full_like(means, self.std**2)
        mixture = GaussianMixture(torch.ones(self.n_modes, dtype=_F64), means, variances)
        self.mixture = mixture.to(device=device, dtype=dtype)

    @classmethod
    def _from_mixture(cls, mixture: GaussianMixture) -> Gmm40Fab:
        obj = cls.__new__(cls)
        obj.mixture = mixture
        return obj

    @property
    def means(self) -> torch.Tensor:
        """``(40, 2)`` component means in the target's dtype and device."""
        return self.mixture.means

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Gmm40Fab:
        """A copy on ``device`` / in ``dtype``."""
        return self._from_mixture(self.mixture.to(device=device, dtype=dtype))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log density, ``(N, 2) -> (N,)``."""
        check_x(x, self.dim, "Gmm40Fab.log_prob")
        return self.mixture.log_prob(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples ``(n, 2)`` on the target's device and dtype."""
        return self.mixture.sample(check_n(n, "Gmm40Fab.sample"), generator)

    def mode_index(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``(N,)`` int64 of the nearest mean (equal covariances: the most likely mode)."""
        check_x(x, self.dim, "Gmm40Fab.mode_index")
        return torch.cdist(x, self.means.to(x)).argmin(dim=-1)


# --------------------------------------------------------------------------- funnel
class Funnel:
    r"""Neal's funnel ``funnel{dim}``: :math:`x_0 \sim \mathcal N(0, 3^2)`,
    :math:`x_i \mid x_0 \sim \mathcal N(0, e^{x_0})` (variance :math:`e^{x_0}`), ``i = 1..dim-1``.

    .. math::
        \log\pi(x) = -\frac{x_0^2}{18} - \frac12\log(18\pi)
        - \frac{d-1}2\big(x_0 + \log 2\pi\big) - \frac12 e^{-x_0}\sum_{i\ge1} x_i^2,

    normalised, so ``log_z = 0``.
    """

    log_z = 0.0
    scale0 = 3.0

    def __init__(self, dim: int = 10) -> None:
        self.dim = check_int("dim", dim, 2, where="Funnel")
        self.name = f"funnel{dim}"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log density, ``(N, dim) -> (N,)``."""
        check_x(x, self.dim, "Funnel.log_prob")
        x0, rest = x[:, 0], x[:, 1:]
        s0 = self.scale0
        log_p0 = -0.5 * (x0 / s0) ** 2 - 0.5 * _LOG_2PI - math.log(s0)
        k = self.dim - 1
        log_p_rest = -0.5 * rest.square().sum(-1) * torch.exp(-x0) - 0.5 * k * (x0 + _LOG_2PI)
        return log_p0 + log_p_rest

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        r"""``n`` exact samples ``(n, dim)``: :math:`x_0 = 3\varepsilon_0`,
        :math:`x_i = e^{x_0/2}\varepsilon_i`."""
        eps = torch.randn(
            check_n(n, "Funnel.sample"), self.dim, generator=generator, dtype=_F64, device=device
        )
        x0 = self.scale0 * eps[:, :1]
        return torch.cat([x0, torch.exp(0.5 * x0) * eps[:, 1:]], dim=1).to(dtype)


# --------------------------------------------------------------------------- 1-D quartic wells
class QuarticWell:
    r"""A 1-D unnormalised density :math:`f(x) = e^{P(x)}`, :math:`P` a quartic with a negative
    leading coefficient and two maxima; exact quadrature and an exact rejection sampler.

    Envelope :math:`g = w_+\mathcal N(m_+, s^2) + w_-\mathcal N(m_-, s^2)`, :math:`m_\pm` the
    outer critical points of :math:`P` (the two modes). Since :math:`g \ge w_\pm\mathcal N(m_\pm,
    s^2)`, for :math:`\pm x \ge 0`

    .. math::
        \log\frac{f(x)}{g(x)} \le B_\pm(x) = P(x) + \frac{(x - m_\pm)^2}{2s^2}
        + \log(s\sqrt{2\pi}) - \log w_\pm,

    a quartic whose maximum on the half-line is attained at a real root of :math:`B_\pm'` (a
    cubic, solved by ``numpy``) or at 0; ``log_bound`` is the larger of the two maxima plus
    1e-6 of slack for the round-off in the roots. A proposal :math:`x \sim g` is accepted with
    probability :math:`f(x) / (e^{\text{log\_bound}} g(x)) \le 1`: exact samples from
    :math:`f / Z`, at acceptance rate :math:`Z e^{-\text{log\_bound}}` (0.48 for the manywell
    well, 0.50 for the mw5 well).
    """

    def __init__(self, coeffs: tuple[float, ...], scale: float, weight_right: float) -> None:
        self.poly = Polynomial(coeffs)
        if self.poly.degree() != 4 or coeffs[4] >= 0:
            raise SMCDiffError("QuarticWell: P must be a quartic with negative x^4 coefficient")
        crit = self.poly.deriv().roots()
        crit = np.sort(crit[np.abs(crit.imag) < 1e-12].real)
        self.modes = (float(crit[-1]), float(crit[0]))  # (m_+, m_-)
        self.scale = scale
        self.weights = (weight_right, 1.0 - weight_right)
        self.log_bound = max(self._half_line_max(sign) for sign in (1, -1)) + 1e-6

    def _half_line_max(self, sign: int) -> float:
        """:math:`\\max_{\\pm x \\ge 0} B_\\pm(x)` for ``sign = ±1``."""
        i = 0 if sign > 0 else 1
        m, s = self.modes[i], self.scale
        b = self.poly + Polynomial([m * m, -2.0 * m, 1.0]) / (2.0 * s * s)
        roots = b.deriv().roots()
        roots = roots[np.abs(roots.imag) < 1e-12].real
        cand = np.append(roots[sign * roots >= 0], 0.0)
        return (
            float(b(cand).max())
            + math.log(s * math.sqrt(2.0 * math.pi))
            - math.log(self.weights[i])
        )

    def log_f(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`P(x)` elementwise (Horner), differentiable."""
        out = torch.zeros_like(x)
        for c in reversed(self.poly.coef.tolist()):
            out = out * x + c
        return out

    def _integrate(self, g) -> float:
        from scipy.integrate import quad

        lo, hi = self.modes[1] - 10.0, self.modes[0] + 10.0  # f < e^{-1000} f(mode) outside
        return quad(g, lo, hi, points=[0.0], epsabs=0.0, epsrel=1e-13, limit=200)[0]

    @cached_property
    def log_z(self) -> float:
        r""":math:`\log\int e^{P(x)}dx` by adaptive quadrature."""
        return math.log(self._integrate(lambda t: math.exp(self.poly(t))))

    @cached_property
    def prob_positive(self) -> float:
        """:math:`P(x > 0)` under :math:`f / Z`."""
        return self._integrate(lambda t: math.exp(self.poly(t)) * (t > 0)) / math.exp(self.log_z)

    @cached_property
    def abs_moments(self) -> tuple[float, float]:
        r""":math:`(\mathbb E|x|, \mathbb E x^2)` under :math:`f / Z`."""
        z = math.exp(self.log_z)
        m1 = self._integrate(lambda t: abs(t) * math.exp(self.poly(t))) / z
        m2 = self._integrate(lambda t: t * t * math.exp(self.poly(t))) / z
        return m1, m2

    def sample(
        self, n: int, generator: torch.Generator | None, device: str | torch.device
    ) -> torch.Tensor:
        """``n`` exact draws ``(n,)`` float64: rounds of ``2 * missing + 64`` proposals."""
        (mp, mm), s, (wp, wm) = self.modes, self.scale, self.weights
        kw = {"generator": generator, "dtype": _F64, "device": device}
        chunks, have = [], 0
        while have < n:
            m = 2 * (n - have) + 64
            x = torch.where(torch.rand(m, **kw) < wp, mp, mm) + s * torch.randn(m, **kw)
            log_g = torch.logaddexp(
                math.log(wp) - 0.5 * ((x - mp) / s) ** 2, math.log(wm) - 0.5 * ((x - mm) / s) ** 2
            ) - math.log(s * math.sqrt(2.0 * math.pi))
            accept = torch.log(torch.rand(m, **kw)) < self.log_f(x) - self.log_bound - log_g
            x = x[accept][: n - have]
            chunks.append(x)
            have += x.shape[0]
        return torch.cat(chunks)


# x1 factor of a manywell pair: P(x) = 0.5 x + 6 x^2 - x^4 (= -(x^4 - 6x^2 - 0.5x))
_DOUBLE_WELL = QuarticWell((0.0, 0.5, 6.0, 0.0, -1.0), scale=0.43, weight_right=0.85)
# one mw5 coordinate: P(x) = -(x^2 - 4)^2 = -16 + 8x^2 - x^4
_MW_WELL = QuarticWell((-16.0, 0.0, 8.0, 0.0, -1.0), scale=0.355, weight_right=0.5)


class ManyWell:
    r"""``manywell{dim}`` (FAB's ManyWell): ``dim/2`` independent pairs
    :math:`(x_{2j}, x_{2j+1})` (consecutive coordinates; the even one is the double well), each
    with energy :math:`E = x_1^4 - 6x_1^2 - 0.5x_1 + 0.5x_2^2`; ``log_prob = -sum E``
    (unnormalised).

    Ground truth, by quadrature of the 1-D double well:
    ``log_z = dim/2 * (log ∫ e^{-x^4 + 6x^2 + 0.5x} dx + log √(2π))`` = 164.695675 at ``dim=32``;
    ``prob_x1_positive`` = :math:`P(x_1 > 0)` = 0.844307 per pair; :math:`2^{16}` modes with
    uneven weights. Exact samples: :math:`x_1` by rejection (:class:`QuarticWell`),
    :math:`x_2 \sim \mathcal N(0, 1)`.
    """

    def __init__(self, dim: int = 32) -> None:
        dim = check_int("dim", dim, 2, where="ManyWell")
        if dim % 2:
            raise SMCDiffError(f"ManyWell: dim must be a positive even int, got {dim!r}")
        self.dim = dim
        self.n_pairs = dim // 2
        self.name = f"manywell{dim}"

    @property
    def log_z(self) -> float:
        """Log normaliser of ``log_prob`` (quadrature; 164.695675 at ``dim=32``)."""
        return self.n_pairs * (_DOUBLE_WELL.log_z + 0.5 * _LOG_2PI)

    @property
    def prob_x1_positive(self) -> float:
        r""":math:`P(x_{2j} > 0)` for each pair (quadrature; 0.844307)."""
        return _DOUBLE_WELL.prob_positive

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density ``-sum E``, ``(N, dim) -> (N,)``."""
        check_x(x, self.dim, "ManyWell.log_prob")
        return (_DOUBLE_WELL.log_f(x[:, 0::2]) - 0.5 * x[:, 1::2].square()).sum(-1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``n`` exact samples ``(n, dim)``."""
        n = check_n(n, "ManyWell.sample")
        x1 = _DOUBLE_WELL.sample(n * self.n_pairs, generator, device).reshape(n, self.n_pairs)
        x2 = torch.randn(n, self.n_pairs, generator=generator, dtype=_F64, device=device)
        return torch.stack([x1, x2], dim=-1).reshape(n, self.dim).to(dtype)


class MW5:
    r"""``mw5``: :math:`\log\tilde\pi(x) = -\sum_{i=1}^5 (x_i^2 - 4)^2` (d = m = 5, δ = 4),
    unnormalised; 32 modes of equal weight at :math:`x \in \{-2, 2\}^5` (approximately).

    Ground truth, by quadrature of one coordinate: ``log_z = 5 log ∫ e^{-(x^2-4)^2} dx``
    = -0.541056 (5 × -0.108211); ``abs_mean`` = :math:`\mathbb E|x_i|` = 1.975015,
    ``second_moment`` = :math:`\mathbb E x_i^2` = 3.934105. Exact samples by rejection per
    coordinate (:class:`QuarticWell`, envelope :math:`\frac12\mathcal N(\pm2, 0.355^2)`).
    """

    name = "mw5"
    dim = 5
    n_modes = 32

    @property
    def log_z(self) -> float:
        """Log normaliser of ``log_prob`` (quadrature; -0.541056)."""
        return self.dim * _MW_WELL.log_z

    @property
    def abs_mean(self) -> float:
        r""":math:`\mathbb E|x_i|` (quadrature; 1.975015)."""
        return _MW_WELL.abs_moments[0]

    @property
    def second_moment(self) -> float:
        r""":math:`\mathbb E x_i^2` (quadrature; 3.934105)."""
        return _MW_WELL.abs_moments[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density, ``(N, 5) -> (N,)``."""
        check_x(x, self.dim, "MW5.log_prob")
        return _MW_WELL.log_f(x).sum(-1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``n`` exact samples ``(n, 5)``."""
        n = check_n(n, "MW5.sample")
        return _MW_WELL.sample(n * self.dim, generator, device).reshape(n, self.dim).to(dtype)

    def mode_index(self, x: torch.Tensor) -> torch.Tensor:
        r"""Mode ``(N,)`` int64 in ``0..31``: the sign pattern :math:`\sum_i 2^i [x_i > 0]`."""
        check_x(x, self.dim, "MW5.mode_index")
        bits = 2 ** torch.arange(self.dim, device=x.device)
        return ((x > 0).long() * bits).sum(-1)
