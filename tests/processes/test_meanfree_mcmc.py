"""MCMC moves on the mean-free subspace: :func:`subspace_corrector` keeps the centre of mass and
samples the right Gaussian of the subspace; the steering start (``init="mala" / "pcnl"``) uses
it for a :class:`MeanFree` process."""

import pytest
import torch

from smcdiff.diffusion_fk import build_diffusion_fk
from smcdiff.errors import SMCDiffError
from smcdiff.processes import VE
from smcdiff.processes.meanfree import MeanFree, MeanFreeGaussian, center, subspace_corrector
from smcdiff.seeding import seeded_generator as gen
from smcdiff.steering.methods.diffusion import start_corrector
from tests.stats import assert_gaussian_moments

F64 = torch.float64


def _dispersed(n: int, proc: MeanFree, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` dispersed starts ``(n, 4, 2)`` with a non-zero centre of mass, and that COM."""
    g = gen(seed)
    com = torch.randn(n, 1, proc.spatial_dim, generator=g, dtype=F64)
    return 1.5 * proc.randn(n, g, dtype=F64) + com, com


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["mala", "pcnl"])
def test_subspace_moves_keep_the_com_and_sample_the_subspace_gaussian(kernel):
    # target N_X(mu, c^2 I) on the 6-dim subspace: z = Q^T x ~ N(Q^T mu, c^2 I_6) exactly
    proc = MeanFree(VE(), 4, 2)
    mu = center(torch.randn(4, 2, generator=gen(1), dtype=F64))
    c2 = 0.49
    opts = {"prior_var": 1.0} if kernel == "pcnl" else {}
    corr = subspace_corrector(proc, kernel, lambda k, x: proc.log_normal(x, mu, c2), 60, 0.3,
                              **opts)  # fmt: skip
    x0, com = _dispersed(2000, proc, 2)
    state, info = corr(0, {"x": x0, "other": 7}, gen(3))
    x = state["x"]
    assert x.shape == x0.shape and state["other"] == 7
    assert torch.allclose(x.mean(-2, keepdim=True), com, atol=1e-12)
    assert 0.3 < float(info["accept"]) < 0.95
    z = proc.to_subspace(x)
    mean_z = proc.to_subspace(mu[None])[0]
    assert_gaussian_moments(z, mean_z, c2 * torch.eye(6, dtype=F64))


def test_steering_start_moves_on_the_subspace_for_a_mean_free_process():
    proc = MeanFree(VE(), 4, 2)
    model = MeanFreeGaussian(torch.zeros(4, 2), 0.5, proc)
    fk = build_diffusion_fk(model, [proc.t_max, 0.5, proc.t_min], dtype=F64)
    x0, com = _dispersed(64, proc, 4)
    for init in ("mala", "pcnl"):
        corr = start_corrector(fk, init, 5)
        x = corr(0, {"x": x0}, gen(5))[0]["x"]
        assert torch.allclose(x.mean(-2, keepdim=True), com, atol=1e-12), init
        assert not torch.allclose(x, x0)


def test_subspace_corrector_needs_a_mean_free_process():
    with pytest.raises(SMCDiffError, match="MeanFree"):
        subspace_corrector(VE(), "mala", lambda k, x: -x.square().sum(-1))
