"""train_score, the loss weightings, EMA, checkpoints.

Exact references: the noised Gaussian's closed-form score (training must converge to it), the
closed-form minimum of the denoising loss (E Var(eps | x_t)), networks computing the exact answer
in every parameterisation, and a hand-computed EMA recurrence.
"""

import math

import pytest
import torch
from torch import nn

import smcdiff
from smcdiff.errors import CheckpointError, SMCDiffError
from smcdiff.nets import MLP, UNet
from smcdiff.processes.parameterization import coefficients
from smcdiff.training import EMA, TrainSettings, load_score, save_score, train_score
from smcdiff.training.loss import sample_times
from smcdiff.training.train import Trainer
from tests.stats import assert_iid_mean, assert_within

F64 = torch.float64
VP = smcdiff.VP()
MEAN, VAR = torch.tensor([1.0, -0.5]), torch.tensor([0.25, 2.0])


def gaussian_data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MEAN + VAR.sqrt() * torch.randn(n, 2, generator=g)


def exact_gaussian_score(x, t, process=VP):
    """Score of x_t for x_0 ~ N(MEAN, diag VAR): -(x - a m) / (a^2 v + s^2); t per row."""
    a, s, _, _ = coefficients(process, t, x)
    return -(x - a * MEAN.to(x)) / (a * a * VAR.to(x) + s * s)


def score_error(model, process=VP, times=(0.05, 0.2, 0.5, 0.9), n=2000):
    """sigma_t^2-weighted squared score error relative to sigma_t^2 |s|^2, on x_t ~ p_t."""
    exact = smcdiff.exact_score(smcdiff.Gaussian(MEAN.double(), VAR.double()), process)
    num = den = 0.0
    for t in times:
        x = exact.sample_marginal(n, t, torch.Generator().manual_seed(1)).float()
        tt = torch.full((n,), t)
        sig2 = float(process.sigma(t)) ** 2
        s_true = exact_gaussian_score(x, tt, process)
        num += sig2 * float((model.score(x, tt) - s_true).square().sum(-1).mean())
        den += sig2 * float(s_true.square().sum(-1).mean())
    return num / den


@pytest.mark.slow
def test_training_converges_to_the_closed_form_score(tmp_path):
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=1)
    kw = dict(batch_size=128, lr=3e-3, seed=0, ema_decay=0.95, progress=False)
    ckpt = tmp_path / "gauss.pt"
    early = train_score(net, gaussian_data(), VP, n_iters=150, checkpoint=str(ckpt), **kw)
    late = train_score(net, gaussian_data(), VP, n_iters=600, resume=str(ckpt), **kw)
    e_early, e_late = score_error(early), score_error(late)
    assert e_late < 0.5 * e_early, (e_early, e_late)
    assert e_late < 0.01, e_late  # an untrained net is at ~1
    assert late.training.resumed_from == 150 and late.training.losses.shape == (600,)
    assert torch.equal(late.training.losses[:150], early.training.losses)


@pytest.mark.slow
def test_an_energy_net_trains_through_its_gradient():
    # the loss is on -grad_x E: its parameter gradients need second derivatives of the net
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=1, output="scalar")
    before = score_error(smcdiff.EnergyNetwork(net, VP))
    energy = train_score(net, gaussian_data(), VP, "energy", n_iters=150, batch_size=128,
                         lr=3e-3, seed=0, ema_decay=0.9, progress=False)  # fmt: skip
    assert isinstance(energy, smcdiff.EnergyNetwork)
    after = score_error(energy)
    assert before > 0.5 and after < 0.2, (before, after)


class ExactNet(nn.Module):
    """Outputs the exact answer for Gaussian data in parameterisation ``kind`` (``"energy"``: the
    exact -log p_t up to a constant); one dummy parameter so optimisers have something."""

    def __init__(self, kind, process=VP):
        super().__init__()
        self.kind, self.process = kind, process
        self.zero = nn.Parameter(torch.zeros(()))
        self.event_shape = (2,)

    def forward(self, x, t):
        if self.kind == "energy":
            a, s, _, _ = coefficients(self.process, t, x)
            e = 0.5 * ((x - a * MEAN) ** 2 / (a * a * VAR + s * s)).sum(-1)
            return e + 3.0 * t + self.zero
        score = exact_gaussian_score(x, t, self.process)
        return smcdiff.processes.from_score(self.kind, score, x, t, self.process) + self.zero


def exact_loss(kind, weighting, process=VP, n=20000, seed=3, **kw):
    settings = TrainSettings(kind, n_iters=1, batch_size=n, weighting=weighting, **kw)
    trainer = Trainer(ExactNet(kind, process), gaussian_data(), process, settings, seed=seed)
    return float(trainer.loss(*trainer.batches.next()).detach())


@pytest.mark.parametrize("process", [VP, smcdiff.Flow()], ids=["vp", "flow"])
def test_every_parameterisation_reaches_the_same_closed_form_minimum(process):
    # with the exact net the eps-error is E[eps | x_t] - eps; its mean square per dimension is
    # Var(eps | x_t) = a^2 v / (a^2 v + s^2): every prediction must give this loss under the
    # "eps" weighting, on the same draws (same seed)
    kinds = ("eps", "x0", "v", "score", "velocity", "energy")
    losses = {k: exact_loss(k, "eps", process) for k in kinds}
    for k in kinds:
        assert math.isclose(losses[k], losses["eps"], rel_tol=1e-4), losses
    t = torch.linspace(process.t_min, process.t_max, 200001, dtype=F64)
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    var = (a * a * VAR.double() / (a * a * VAR.double() + s * s)).mean(-1)
    truth = float(var.mean())  # uniform t: the integral by a fine Riemann sum
    per_sample_sd = 0.5  # |eps_hat - eps|^2 / 2 has sd < 0.5 (chi-square-like, <= 1 var)
    assert_within(losses["eps"], truth, per_sample_sd / math.sqrt(20000), n_se=5)


def test_natural_weighting_is_each_prediction_own_mse():
    # the x0 net's natural loss is the x0-MSE, which is the eps-MSE weighted by 1/snr: both
    # routes must agree on the same draws (and likewise for v)
    assert math.isclose(exact_loss("x0", "natural"), exact_loss("eps", "x0"), rel_tol=1e-4)
    assert math.isclose(exact_loss("v", "natural"), exact_loss("eps", "v"), rel_tol=1e-4)
    assert math.isclose(exact_loss("eps", "natural"), exact_loss("score", "eps"), rel_tol=1e-4)
    # min-SNR with a huge gamma is the eps loss; a callable weighting is used as given
    assert math.isclose(exact_loss("v", "min_snr", min_snr_gamma=1e12), exact_loss("eps", "eps"),
                        rel_tol=1e-4)  # fmt: skip
    half = exact_loss("x0", lambda t: 0.5 * torch.ones_like(t))
    assert math.isclose(half, 0.5 * exact_loss("eps", "eps"), rel_tol=1e-4)


def test_log_snr_time_sampling_is_uniform_in_log_snr():
    g = torch.Generator().manual_seed(4)
    n = 20000
    t = sample_times(VP, n, "log_snr", 0.01, 0.9, g, torch.device("cpu"))
    assert float(t.min()) >= 0.01 and float(t.max()) <= 0.9
    lam = VP.log_snr(t)
    lo, hi = float(VP.log_snr(0.9)), float(VP.log_snr(0.01))
    u = (lam - lo) / (hi - lo)  # must be U(0, 1): mean 1/2 and mean square 1/3, exact SEs
    assert_iid_mean(u, 0.5, 1 / 12, what="log-SNR position")
    assert_iid_mean(u * u, 1 / 3, 4 / 45, what="second moment")


def test_ema_matches_the_hand_recurrence():
    lin = nn.Linear(2, 1)
    ema = EMA(lin, 0.9)
    hand = [p.detach().clone() for p in lin.parameters()]
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        with torch.no_grad():
            for p in lin.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        ema.update(lin)
        hand = [0.9 * h + 0.1 * p.detach() for h, p in zip(hand, lin.parameters(), strict=True)]
    for h, a in zip(hand, ema.average.parameters(), strict=True):
        torch.testing.assert_close(a, h)
    assert ema.n_updates == 5 and not ema.average.training


def test_train_score_returns_the_ema_of_its_iterates():
    torch.manual_seed(6)
    net = MLP(2, hidden=8, depth=1)
    seen = [[p.detach().clone() for p in net.parameters()]]

    def record(k, info):
        seen.append([p.detach().clone() for p in net.parameters()])

    score = train_score(net, gaussian_data(), VP, n_iters=6, batch_size=32, seed=1,
                        ema_decay=0.8, progress=record)  # fmt: skip
    hand = seen[0]
    for params in seen[1:]:
        hand = [0.8 * h + 0.2 * p for h, p in zip(hand, params, strict=True)]
    for h, a in zip(hand, score.net.parameters(), strict=True):
        torch.testing.assert_close(a, h)
    assert score.net is not net and isinstance(score, smcdiff.NetworkScore)
    assert score.training.seed == 1 and score.nfe == 0


def test_same_seed_same_weights_and_resume_equals_an_uninterrupted_run(tmp_path):
    def run(n_iters, **kw):
        torch.manual_seed(7)
        net = MLP(2, hidden=8, depth=1)
        return train_score(net, gaussian_data(), VP, n_iters=n_iters, batch_size=16, seed=2,
                           grad_clip=1.0, progress=False, **kw)  # fmt: skip

    a, b = run(20), run(20)
    f = tmp_path / "half.pt"
    run(10, checkpoint=str(f))
    c = run(20, resume=str(f))
    for pa, pb, pc in zip(a.net.parameters(), b.net.parameters(), c.net.parameters(), strict=True):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)
    assert torch.equal(a.training.grad_norms, c.training.grad_norms)
    assert a.training.n_clipped == int((a.training.grad_norms > 1.0).sum())
    with pytest.raises(CheckpointError, match="other settings"):
        run(20, resume=str(f), lr=0.5)


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    x = torch.randn(5, 1, 8, 8)
    t = torch.rand(5)
    torch.manual_seed(8)
    unet = smcdiff.NetworkScore(
        UNet(1, base=8).eval(), VP, "v", time_input="log_snr", event_shape=(1, 8, 8)
    )
    energy = smcdiff.EnergyNetwork(MLP(3, hidden=8, output="scalar").eval(),
                                   smcdiff.VE(0.02, 20.0))  # fmt: skip
    for model, xs in ((unet, x), (energy, torch.randn(5, 3))):
        path = save_score(model, tmp_path / "m.pt")
        raw = torch.load(path, weights_only=True)  # plain values and tensors only
        assert raw["format"] == "smcdiff-score"
        back = load_score(path)
        assert type(back) is type(model) and back.time_input == model.time_input
        assert type(back.process) is type(model.process) and vars(back.process) == vars(
            model.process
        )
        torch.testing.assert_close(back.score(xs, t), model.score(xs, t), rtol=0, atol=0)


class MyNet(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.config = {"width": width}
        self.lin = nn.Linear(2, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x, t):
        return self.out(torch.tanh(self.lin(x))) * t[:, None]


def test_a_user_net_loads_given_its_class_or_an_instance(tmp_path):
    torch.manual_seed(9)
    model = smcdiff.NetworkScore(MyNet(6), VP, "eps", event_shape=(2,))
    path = save_score(model, tmp_path / "mine.pt")
    with pytest.raises(CheckpointError, match="pass net="):
        load_score(path)
    x, t = torch.randn(4, 2), torch.rand(4)
    for given in (MyNet, MyNet(6)):
        torch.testing.assert_close(load_score(path, net=given).score(x, t), model.score(x, t))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_score(path, net=MyNet(3))
    callable_time = smcdiff.NetworkScore(MyNet(), VP, time_input=lambda t: 2 * t, event_shape=2)
    path = save_score(callable_time, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="time_input="):
        load_score(path, net=MyNet)
    assert load_score(path, net=MyNet, time_input=lambda t: 2 * t).score(x, t).shape == (4, 2)


def test_data_loaders_and_bad_arguments():
    data = gaussian_data(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=16)
    torch.manual_seed(10)
    score = train_score(MLP(2, hidden=8, depth=1), loader, VP, "x0", n_iters=6, progress=False)
    assert score.event_shape == (2,) and score.prediction == "x0"
    with pytest.raises(SMCDiffError, match="weighting must be one of"):
        train_score(MLP(2), data, VP, weighting="snr", n_iters=1)
    with pytest.raises(SMCDiffError, match="checkpoint_every needs checkpoint"):
        train_score(MLP(2), data, VP, n_iters=1, checkpoint_every=1)
    with pytest.raises(SMCDiffError, match="floating tensor"):
        train_score(MLP(2), data.long(), VP, n_iters=1)


class RecordLabels(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.event_shape = (2,)
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return x * self.w


def test_labels_follow_their_rows_and_dropout_puts_in_the_null_label():
    n = 4000
    y = torch.arange(n) % 3
    data = y[:, None].float().expand(n, 2).contiguous()  # each row holds its label
    s = TrainSettings(batch_size=n, label_dropout=0.3, null_label=7, n_iters=1)
    trainer = Trainer(RecordLabels(), data, VP, s, seed=12, labels=y)
    x0, labels = trainer.batches.next()
    assert torch.equal(x0[:, 0].long(), labels)
    trainer.loss(x0, labels)
    got = trainer.net.seen[-1]
    dropped = got == 7
    assert torch.equal(got[~dropped], labels[~dropped])
    assert_within(float(dropped.double().mean()), 0.3, math.sqrt(0.3 * 0.7 / n), n_se=5)
    assert trainer.model.cond == {}  # the batch's labels do not stay on the model
    with pytest.raises(SMCDiffError, match="null_label="):
        Trainer(RecordLabels(), data, VP, TrainSettings(label_dropout=0.1), labels=y)


@pytest.mark.slow
def test_a_class_conditional_net_learns_each_class_and_the_null_label_the_mixture():
    g = torch.Generator().manual_seed(13)
    n = 4096
    y = torch.randint(0, 2, (n,), generator=g)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    data = centers[y] + 0.5 * torch.randn(n, 2, generator=g)
    torch.manual_seed(13)
    net = MLP(2, hidden=32, depth=1, n_classes=2)
    score = train_score(net, data, VP, n_iters=400, batch_size=128, lr=3e-3, seed=3,
                        ema_decay=0.95, labels=y, label_dropout=0.2, progress=False)  # fmt: skip
    t, m = 0.2, 2000
    parts = [smcdiff.Gaussian(c.double(), 0.25 * torch.ones(2, dtype=F64)) for c in centers]
    mix = smcdiff.GaussianMixture(torch.ones(2), centers.double(), 0.25 * torch.ones(2, 2))
    tt, sig2 = torch.full((m,), t), float(VP.sigma(t)) ** 2

    def err(model, law, exact):
        """sigma^2-weighted squared error against exact.score on draws of law at time t."""
        x = law.noised(VP, t).sample(m, torch.Generator().manual_seed(14))
        diff = model.score(x.float(), tt).double() - exact.noised(VP, t).score(x)
        return sig2 * float(diff.square().sum(-1).mean())

    for c in (0, 1):
        model = score.with_cond(y=torch.tensor(c))
        own, other = err(model, parts[c], parts[c]), err(model, parts[c], parts[1 - c])
        assert own < 0.05 * other, (c, own, other)
    null = score.with_cond(y=torch.tensor(2))  # the "no label" row: the mixture's score
    assert err(null, mix, mix) < 0.05 * err(null, mix, parts[0]), "null label"
