import numpy as np
import pytest
import torch
from torch import nn

from transferkit.errors import UserError
from transferkit.select.model_embed import AutoencoderConfig, WeightAutoencoder, weight_statistics


def _mlp(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


def test_weight_statistics_shape_determinism_and_name_independence():
    m = _mlp(0)
    v = weight_statistics(m, dim=1024, slots=16)
    assert v.shape == (1024,) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_array_equal(v, weight_statistics(m, dim=1024, slots=16))
    renamed = {f"layer{i}.w": t for i, t in enumerate(m.state_dict().values())}
    np.testing.assert_array_equal(v, weight_statistics(renamed, dim=1024, slots=16))
    # the statistics see the weights: another init differs a little, a rescaled model a lot
    other = weight_statistics(_mlp(1), dim=1024, slots=16)
    scaled = weight_statistics(_mlp(0, scale=3.0), dim=1024, slots=16)
    assert 0 < np.abs(v - other).mean() < np.abs(v - scaled).mean()


def test_weight_statistics_quantiles_are_the_values():
    w = torch.arange(1000, dtype=torch.float32).reshape(10, 100)  # one matrix, no vectors
    v = weight_statistics({"w": w}, dim=2 * 40, slots=1).reshape(2, 40)
    quantiles, stats = v[0, :32], v[0, 32:]
    assert quantiles[0] == pytest.approx(np.quantile(np.arange(1000), 0.5 / 32), abs=1.0)
    assert stats[2] == pytest.approx(499.5)  # mean
    assert np.all(v[1] == 0)  # no vector-shaped tensors


def test_weight_statistics_bad_dims():
    with pytest.raises(UserError, match="slots"):
        weight_statistics(_mlp(0), dim=1000, slots=64)
    with pytest.raises(UserError, match="no floating-point weights"):
        weight_statistics({"steps": torch.tensor([1, 2])}, dim=1024, slots=16)


@pytest.mark.parametrize("activation,loss", [("gelu", "mse"), ("relu", "smoothl1"), ("LeakyReLU", "mse")])
def test_autoencoder_shapes_losses_and_checkpoint(activation, loss):
    cfg = AutoencoderConfig(
        input_dim=64, hidden=[32, 16], code_dim=8, activation=activation, loss=loss, l1_code=0.1
    )
    ae = WeightAutoencoder(cfg)
    x = torch.randn(6, 64) * 5 + 2
    ae.set_normalization(x)
    recon, code = ae(x)
    assert recon.shape == (6, 64) and code.shape == (6, 8)
    out = ae.loss(x)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 0.1 * out["l1"].item(), rel=1e-5)
    again = WeightAutoencoder.from_checkpoint(ae.checkpoint())
    np.testing.assert_allclose(again.embed(x.numpy()), ae.eval().embed(x.numpy()), atol=1e-6)
    with pytest.raises(UserError, match=r"\(B, 64\)"):
        ae.encode(torch.randn(2, 10))


def test_autoencoder_config_errors():
    with pytest.raises(UserError, match="activation"):
        AutoencoderConfig(activation="tanhh")
    with pytest.raises(UserError, match="loss"):
        AutoencoderConfig(loss="huberish")
    with pytest.raises(UserError, match="dropout"):
        AutoencoderConfig(dropout=1.5)
