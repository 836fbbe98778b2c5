"""NetworkScore(compile=...): compiled and eager give the same scores (and gradients), a ragged
last chunk does not recompile, a failing compiler falls back to eager with a warning naming it.

Graphs are counted with a custom ``torch.compile`` backend (``counting_backend``: it records each
graph Dynamo hands it and runs it as traced), which is exact and needs no C compiler. Inductor
itself (the default backend, C++ code generation on a CPU) is checked by
``test_inductor_matches_eager``, which takes ~40 s on this 2-core machine and only runs with
``SMCDIFF_TEST_INDUCTOR=1``.
"""

import os
import shutil
import warnings

import pytest
import torch

import smcdiff
from smcdiff.nets import MLP
from smcdiff.scores.network import compile_options


def counting_backend(graphs: list):
    """A torch.compile backend that appends each graph it is given to ``graphs`` and runs it."""

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def tiny_net(dim: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(dim, hidden=16, depth=2).eval()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # no graph cached by an earlier test is reused
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_scores_equal_eager_and_ragged_chunks_do_not_recompile():
    net, process = tiny_net(), smcdiff.VP()
    graphs: list = []
    eager = smcdiff.NetworkScore(net, process, "eps", max_batch=7)
    comp = smcdiff.NetworkScore(
        net, process, "eps", max_batch=7, compile={"backend": counting_backend(graphs)}
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen)  # chunks of 7, 7, 7, 7 and 2 (padded to 7)
    t = 0.05 + 0.9 * torch.rand(30, generator=gen)
    for _ in range(2):
        assert torch.allclose(comp.score(x, t), eager.score(x, t), rtol=1e-5, atol=1e-6)
    assert len(graphs) == 1  # one shape for every chunk: compiled once
    assert comp.counter.calls == 10 and comp.counter.rows == 60 and comp.nfe == 2
    info = comp.compile_info
    assert info["compiled"] and info["error"] is None and info["first_call_s"] > 0
    # gradients through the compiled net (a guided proposal's x0(x)) equal the eager ones
    xg = x.clone().requires_grad_(True)
    (g_c,) = torch.autograd.grad(comp.predict_as("x0", xg, t).square().sum(), xg)
    (g_e,) = torch.autograd.grad(eager.predict_as("x0", xg, t).square().sum(), xg)
    assert torch.allclose(g_c, g_e, rtol=1e-5, atol=1e-5)
    # with_cond copies share the compiled net (no new compilation), eager() turns it off
    assert comp.with_cond().compiled_net is comp.compiled_net
    assert comp.compile(False).compile_info is None


@pytest.mark.slow
def test_a_failing_compiler_falls_back_to_eager_with_a_warning():
    net, process = tiny_net(), smcdiff.VP()

    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    model = smcdiff.NetworkScore(net, process, "eps", compile={"backend": broken})
    x, t = torch.randn(5, 3), torch.full((5,), 0.4)
    with pytest.warns(RuntimeWarning, match=r"torch.compile of the net failed.*no C compiler"):
        out = model.score(x, t)
    assert torch.equal(out, smcdiff.NetworkScore(net, process, "eps").score(x, t))
    assert "no C compiler" in model.compile_info["error"] and not model.compile_info["compiled"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later calls run eagerly, silently
        model.score(x, t)


def test_a_net_that_fails_eagerly_too_raises_its_own_error():
    def bad(x, t):
        raise ValueError("the net's own bug")

    model = smcdiff.NetworkScore(bad, smcdiff.VP(), event_shape=2, compile={"backend": "eager"})
    with pytest.raises(ValueError, match="own bug"):
        model.score(torch.zeros(2, 2), 0.5)


def test_compile_argument_is_checked():
    assert compile_options(False) is None and compile_options(True) == {"mode": "default"}
    assert compile_options("max-autotune") == {"mode": "max-autotune"}
    with pytest.raises(smcdiff.SMCDiffError, match="reduce-overhead"):
        compile_options("fastest")
    with pytest.raises(smcdiff.SMCDiffError, match=r"'modes'.*valid options"):
        compile_options({"modes": "default"})
    with pytest.raises(smcdiff.SMCDiffError, match="compile must be"):
        compile_options(3)
    model = smcdiff.NetworkScore(tiny_net(), smcdiff.VP(), compile="reduce-overhead")
    assert model.compiled_net.cudagraphs and "reduce-overhead" in repr(model)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SMCDIFF_TEST_INDUCTOR") != "1" or shutil.which("cc") is None,
    reason="Inductor on a CPU needs a C compiler and ~40 s on 2 cores (over the 20 s test "
    "budget): set SMCDIFF_TEST_INDUCTOR=1 to run it",
)
def test_inductor_matches_eager():
    net, process = tiny_net(), smcdiff.VP()
    comp = smcdiff.NetworkScore(net, process, "eps", max_batch=16, compile=True)
    eager = smcdiff.NetworkScore(net, process, "eps", max_batch=16)
    x, t = torch.randn(40, 3), torch.rand(40) * 0.9 + 0.05
    assert torch.allclose(comp.score(x, t), eager.score(x, t), rtol=1e-5, atol=1e-6)
    assert comp.compile_info["compiled"]
