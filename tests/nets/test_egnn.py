"""EGNN: exact E(n) and permutation equivariance, mean-free output, and training on the
mean-free subspace against a closed-form score."""

import math

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.nets import EGNN
from smcdiff.processes import VP, MeanFree, MeanFreeGaussian
from smcdiff.seeding import seeded_generator as gen
from smcdiff.training import train_score

F64 = torch.float64


def _net(n, s, dtype=F64, **kw) -> EGNN:
    """A seeded net whose coordinate heads are re-initialised large: the default near-zero init
    would make every equivariance check hold trivially."""
    torch.manual_seed(0)
    net = EGNN(n, s, hidden=16, depth=3, **kw).to(dtype)
    for layer in net.layers:
        torch.nn.init.normal_(layer.coord[-1].weight, std=0.5)
    return net


def _orthogonal(s: int, seed: int, reflect: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(s, s, generator=gen(seed), dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize(("n", "s"), [(4, 2), (13, 3)])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotations_reflections_translations_permutations_exactly(n, s, reflect):
    net = _net(n, s)
    x = 1.5 * torch.randn(6, n, s, generator=gen(1), dtype=F64)
    t = torch.rand(6, generator=gen(2), dtype=F64)
    out = net(x, t)
    assert out.abs().max() > 1e-2  # not a trivially equivariant (zero) map
    rot = _orthogonal(s, 3, reflect)
    shift = torch.randn(6, 1, s, generator=gen(4), dtype=F64) * 10.0
    torch.testing.assert_close(net(x @ rot.T + shift, t), out @ rot.T, atol=1e-11, rtol=0)
    perm = torch.randperm(n, generator=gen(5))
    torch.testing.assert_close(net(x[:, perm], t), out[:, perm], atol=1e-11, rtol=0)
    assert out.sum(1).abs().max() < 1e-12  # mean-free
    # a non-equivariant map would fail: the output is not rotation-invariant
    assert (net(x @ rot.T, t) - out).abs().max() > 1e-3


def test_float32_equivariance_flat_input_and_rows():
    net = _net(5, 3, dtype=torch.float32)
    x = torch.randn(7, 5, 3, generator=gen(6))
    t = torch.rand(7, generator=gen(7))
    out = net(x, t)
    assert out.dtype == torch.float32 and out.shape == x.shape
    rot = _orthogonal(3, 8, False).float()
    torch.testing.assert_close(net(x @ rot.T, t), out @ rot.T, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(net(x.reshape(7, 15), t), out.reshape(7, 15))
    for i in range(7):  # rows never interact
        torch.testing.assert_close(net(x[i : i + 1], t[i : i + 1])[0], out[i])
    assert (net(x, t + 0.3) - out).abs().max() > 1e-4  # the time is wired in
    with pytest.raises(SMCDiffError, match="EGNN"):
        net(torch.randn(2, 4, 3), torch.rand(2))
    rebuilt = EGNN(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, t), out)


def test_full_space_noise_trains_like_subspace_noise():
    """The claim of smcdiff.processes.meanfree: with a translation-invariant, mean-free net, the
    denoising loss with full-space eps and with P eps differ by a weight-free constant, so their
    gradients are equal."""
    proc = MeanFree(VP(), 4, 2)
    net = _net(4, 2)
    x0 = proc.randn(32, gen(9), dtype=F64)
    eps = torch.randn(32, 4, 2, generator=gen(10), dtype=F64)
    peps = proc.project(eps)
    t = torch.rand(32, generator=gen(11), dtype=F64)
    a, s = proc.alpha(t)[:, None, None], proc.sigma(t)[:, None, None]
    grads = []
    for noise in (eps, peps):
        net.zero_grad()
        out = net(a * x0 + s * noise, t)
        (out - noise).square().mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-9)


@pytest.mark.slow
def test_train_score_learns_a_mean_free_gaussian_score():
    """train_score + EGNN on exact draws of a mean-free Gaussian (DW-4 sized; centred, since an
    equivariant net can only represent rotation-invariant laws): the learned eps is close to the
    exact one, -sigma_t * score, while the zero predictor is far (relative error 1)."""
    torch.manual_seed(0)
    proc = MeanFree(VP(), 4, 2)
    exact = MeanFreeGaussian(torch.zeros(4, 2), 2.0, proc)
    data = exact.sample(4096, None, gen(12), dtype=torch.float32)
    net = EGNN(4, 2, hidden=32, depth=2)
    model = train_score(net, data, proc, "eps", n_iters=200, batch_size=128, lr=3e-3, seed=0,
                        ema_decay=None, progress=False)  # fmt: skip
    t = torch.full((512,), 0.5)
    x_t = exact.sample(512, t, gen(13), dtype=torch.float32)
    true_eps = -proc.sigma(t)[:, None, None] * exact.score(x_t, t)
    err = (model.score(x_t, t) * -proc.sigma(t)[:, None, None] - true_eps).square().mean()
    rel = math.sqrt(float(err / true_eps.square().mean()))
    assert rel < 0.25, rel
