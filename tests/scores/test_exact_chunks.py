"""The exact mixture score evaluated in row chunks (bounded memory at N = 1e8) equals the
one-call evaluation."""

import torch

import smcdiff
import smcdiff.scores.exact as exact


def test_row_chunks_give_the_one_call_score_and_density(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    k, d = 8, 6
    means = 3.0 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=gen, dtype=torch.float64) / d**0.5
    covs = a @ a.transpose(1, 2) + 0.5 * torch.eye(d, dtype=torch.float64)
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    model = smcdiff.exact_score(smcdiff.GaussianMixture(weights, means, covs), smcdiff.VP())
    x = torch.randn(1001, d, generator=gen, dtype=torch.float64)
    whole = (model.score(x, 0.3), model.log_density(x, 0.3), *model.score_and_log_density(x, 0.3))
    monkeypatch.setattr(exact, "CHUNK_ELEMENTS", k * d * 64)  # chunks of 64 rows, one of 41
    calls = []
    marginal = model.marginal(0.3)
    monkeypatch.setattr(model, "marginal", lambda t: calls.append(t) or marginal)
    chunked = (model.score(x, 0.3), model.log_density(x, 0.3), *model.score_and_log_density(x, 0.3))
    for a_, b_ in zip(whole, chunked, strict=True):
        assert a_.shape == b_.shape
        torch.testing.assert_close(a_, b_, rtol=1e-12, atol=1e-12)
    assert len(calls) == 3
