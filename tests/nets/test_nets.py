"""Reference networks: shapes, time handling, row independence, labels, configs."""

import pytest
import torch

from smcdiff.errors import SMCDiffError
from smcdiff.nets import MLP, TimeEmbedding, UNet


@pytest.mark.parametrize(
    ("shape", "kw"),
    [((1, 8, 8), {}), ((3, 16, 12), {"base": 8, "mults": (1, 2, 2)}), ((2, 4, 4), {"n_res": 2})],
)
def test_unet_maps_images_to_images(shape, kw):
    torch.manual_seed(0)
    net = UNet(shape[0], **kw)
    x = torch.randn(5, *shape)
    out = net(x, torch.rand(5))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    # a number is broadcast to every row, like a (N,) tensor of that value
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((5,), 0.3)))


def test_unet_refuses_sizes_it_cannot_halve():
    with pytest.raises(SMCDiffError, match="divisible by 2"):
        UNet(1, mults=(1, 2))(torch.randn(2, 1, 7, 8), torch.rand(2))


@pytest.mark.parametrize("net", [MLP(3, hidden=16), UNet(1, base=8)])
def test_rows_do_not_interact(net):
    # per-row gradients of a summed output are the rows' own (what EnergyNetwork relies on)
    torch.manual_seed(1)
    shape = (3,) if isinstance(net, MLP) else (1, 8, 8)
    x = torch.randn(4, *shape)
    t = torch.rand(4)
    full = net(x, t)
    for i in range(4):
        torch.testing.assert_close(net(x[i : i + 1], t[i : i + 1])[0], full[i])


def test_mlp_shapes_outputs_and_time_embeddings():
    torch.manual_seed(2)
    x = torch.randn(6, 4, 3)
    for kind in ("fourier", "sinusoidal"):
        net = MLP((4, 3), hidden=32, depth=2, time_embedding=kind)
        assert net(x, torch.rand(6)).shape == (6, 4, 3)
    energy = MLP(5, output="scalar", hidden=17)  # an odd width works too
    assert energy(torch.randn(6, 5), torch.rand(6)).shape == (6,)
    # the time changes the output (the embedding is wired in)
    net = MLP(2, hidden=16)
    y = torch.randn(3, 2)
    assert not torch.allclose(net(y, torch.zeros(3)), net(y, torch.ones(3)))
    with pytest.raises(SMCDiffError, match="activation must be one of"):
        MLP(2, activation="swish")


def test_time_embedding_features():
    emb = TimeEmbedding(8, "sinusoidal", scale=1.0, max_period=100.0)
    t = torch.tensor([0.0, 0.5, 2.0])
    out = emb(t)
    freqs = torch.tensor([1.0, 100.0 ** (-1 / 4), 100.0 ** (-2 / 4), 100.0 ** (-3 / 4)])
    torch.testing.assert_close(
        out, torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], -1)
    )
    with pytest.raises(SMCDiffError, match="even"):
        TimeEmbedding(5)


def test_class_labels_condition_the_net_and_none_is_the_null_label():
    torch.manual_seed(3)
    net = UNet(1, base=8, n_classes=10)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    a, b = net(x, t, y=torch.tensor([0, 1, 2, 3])), net(x, t, y=torch.tensor([3, 2, 1, 0]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, t), net(x, t, y=torch.full((4,), 10)))
    with pytest.raises(SMCDiffError, match="without n_classes"):
        MLP(2)(torch.randn(3, 2), torch.rand(3), y=torch.zeros(3))


def test_config_rebuilds_an_equal_architecture():
    for net in (MLP((4, 3), hidden=24, depth=2, output="scalar"), UNet(2, base=8, mults=(1, 2, 2))):
        twin = type(net)(**net.config)
        assert [p.shape for p in twin.parameters()] == [p.shape for p in net.parameters()]
        twin.load_state_dict(net.state_dict())
