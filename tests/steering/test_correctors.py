"""MCMC correctors inside FK steering: invariant moves keep the target and the evidence exact."""

import torch

import smcdiff
from smcdiff.diagnostics import weighted_moments
from smcdiff.diffusion_fk import DiffusionFK, PathCorrection, TiltTerm, snr_schedule
from smcdiff.engine import run_smc
from smcdiff.errors import SMCDiffError
from smcdiff.mcmc import mcmc_corrector
from smcdiff.resampling import policy_from_threshold
from tests.stats import assert_unbiased, assert_z_unbiased


def test_mala_corrector_keeps_the_posterior_and_evidence_exact(gaussian_inverse):
    p = gaussian_inverse
    times = smcdiff.time_grid(p.model.process, 20, "log_snr").tolist()
    fk = DiffusionFK(
        p.model,
        times,
        tilt=[TiltTerm("log_likelihood", p.log_likelihood)],
        path=PathCorrection(),
        sampler="ancestral_upper",
        schedule=snr_schedule,
        device=p.model.device,
    )
    calls = []

    def corrector(k, state, generator):
        calls.append(k)
        return mala(k, state, generator)

    mala = mcmc_corrector("mala", fk.log_target, n_moves=2, step_size=0.05)
    gen = torch.Generator(device=p.model.device).manual_seed(0)
    R = 16
    run = run_smc(
        fk, 1000, n_groups=R, policy=policy_from_threshold(0.5), corrector=corrector, generator=gen
    )
    assert calls == list(range(1, 21))
    assert bool((run.trace["accept"][1:] > 0.3).all())  # the moves do move
    assert int(run.trace["nfe"][1:].min()) == 2  # step + refresh after the move
    mean, _ = weighted_moments(run.state["x"].reshape(R, 1000, -1), run.log_weights)
    assert_unbiased(mean, p.posterior.mean(), n_se=4.5, what="posterior mean")
    assert_z_unbiased(run.log_z, p.log_evidence, n_se=4.5)


def test_path_potentials_refuse_correctors(gaussian_inverse):
    p = gaussian_inverse
    for potential in ("max", "sum"):
        try:
            smcdiff.steer(
                p.model,
                log_likelihood=p.log_likelihood,
                potential=potential,
                corrector=lambda k, s, g: (s, {}),
                n_particles=10,
                n_steps=3,
            )
        except SMCDiffError as e:
            assert "per-state potential" in str(e)
        else:
            raise AssertionError("expected SMCDiffError")
