"""to_inference_data: groups, dimensions, values and attributes of the ArviZ export."""

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from smcdiff.diagnostics import to_inference_data, weighted_moments


def _group(data, name: str) -> xr.Dataset:
    """A group as a Dataset, for both InferenceData (0.x) and DataTree (1.x)."""
    group = data[name]
    return group.to_dataset() if isinstance(group, xr.DataTree) else group


def test_single_run_layout(make_result):
    res = make_result(n=300, d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "custom group" warning
        data = to_inference_data(res, seed=1, n_draws=300)

    post = _group(data, "posterior")
    assert post["x"].dims == ("chain", "draw", "x_dim_0")
    assert post["x"].shape == (1, 300, 3)
    # every resampled draw is one of the particles
    parts = res.particles.numpy()
    assert all((parts == row).all(axis=1).any() for row in post["x"].values[0][:50])

    sp = _group(data, "smc_particles")
    assert sp["x"].dims == ("chain", "particle", "x_dim_0")
    assert sp["log_weights"].dims == ("chain", "particle")
    assert sp["log_weights"].dtype == np.float64
    np.testing.assert_array_equal(sp["x"].values[0], parts)
    np.testing.assert_array_equal(sp["log_weights"].values[0], res.log_weights.numpy())
    assert sp["log_z"].shape == (1,)

    tr = _group(data, "smc_trace")
    assert set(tr.data_vars) == set(res.trace) - {"t"}
    assert all(tr[name].dims == ("step",) for name in tr.data_vars)
    assert tr.sizes["step"] == len(res.trace["t"])
    np.testing.assert_array_equal(tr["t"].values, res.trace["t"].numpy())
    assert tr["t"].dims == ("step",)
    np.testing.assert_array_equal(tr["resampled"].values, res.trace["resampled"].numpy())

    attrs = post.attrs
    assert (
        attrs["method"] == "fk"
        and attrs["seed"] == 0
        and attrs["n_steps"] == len(res.trace["t"]) - 1
    )
    assert attrs["path_correction"] == 1 and type(attrs["path_correction"]) is int
    assert "beta" not in attrs  # None has no netCDF form: dropped
    assert attrs["log_z"] == pytest.approx(float(res.log_z))
    assert attrs["n_particles"] == 300 and attrs["n_runs"] == 1
    assert all(type(v) in (str, int, float) for v in attrs.values())
    assert _group(data, "smc_trace").attrs["method"] == "fk"


def test_grouped_runs_layout(make_result):
    R = 3
    res = make_result(n=200, d=2, runs=R)
    data = to_inference_data(res, seed=0, n_draws=200)
    post = _group(data, "posterior")
    assert post["x"].shape == (R, 200, 2)
    sp = _group(data, "smc_particles")
    assert sp["x"].shape == (R, 200, 2) and sp["log_weights"].shape == (R, 200)
    np.testing.assert_array_equal(sp["log_z"].values, res.log_z.numpy())
    tr = _group(data, "smc_trace")
    for name in ("ess", "log_z_increment", "resampled"):
        assert tr[name].dims == ("chain", "step")
        np.testing.assert_array_equal(tr[name].values, res.trace[name].numpy().T)
    assert tr["nfe"].dims == ("step",)  # shared by the runs
    assert post.attrs["n_runs"] == R
    assert post.attrs["log_z"] == pytest.approx(res.log_z.tolist())


def test_posterior_resample_matches_weighted_mean(make_result):
    # log w = x0 on x ~ N(0, I): the target is N(e_0, I). The equal-weight resample must keep the
    # weighted mean; systematic resampling adds at most multinomial noise, sd <= 1/sqrt(N) = 0.016.
    res = make_result(n=4000, d=2, tilt=1.0, seed=3)
    mean, _ = weighted_moments(res.particles, res.log_weights)
    post = _group(to_inference_data(res, seed=5, n_draws=4000), "posterior")
    draws = post["x"].values.reshape(-1, 2)
    np.testing.assert_allclose(draws.mean(0), mean.numpy(), atol=0.06)
    assert abs(mean[0].item() - 1.0) < 0.1  # and the weighting itself is the tilt


def test_seed_fixes_the_posterior_resample(make_result):
    res = make_result()
    a = _group(to_inference_data(res, seed=7), "posterior")["x"].values
    b = _group(res.to_arviz(seed=7), "posterior")["x"].values
    np.testing.assert_array_equal(a, b)


def test_netcdf_round_trip(make_result, tmp_path):
    pytest.importorskip(
        "h5netcdf", reason="writing netCDF needs h5netcdf (an optional dependency of ArviZ)"
    )
    res = make_result(runs=2)
    path = tmp_path / "run.nc"
    to_inference_data(res).to_netcdf(str(path), engine="h5netcdf")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        assert {"posterior", "smc_particles", "smc_trace"} <= set(tree.children)
        tr = tree["smc_trace"].to_dataset()
        np.testing.assert_array_equal(tr["resampled"].values, res.trace["resampled"].numpy().T)
        assert tree["posterior"].attrs["method"] == "fk"


def test_event_shape_gets_one_dim_per_axis(make_result):
    res = make_result(n=50, d=6)
    res.particles = res.particles.reshape(50, 2, 3)
    post = _group(to_inference_data(res, n_draws=50), "posterior")
    assert post["x"].dims == ("chain", "draw", "x_dim_0", "x_dim_1")
    assert post["x"].shape == (1, 50, 2, 3)
    assert torch.is_tensor(res.particles)
