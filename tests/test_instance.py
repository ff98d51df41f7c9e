"""InstanceSpecNorm / instance_norm against float64 numpy statistics computed clip by clip."""

import numpy as np
import pytest
import torch

from specnorm.audio import AudioSpectrogram
from specnorm.instance import InstanceSpecNorm, instance_norm, lengths_to_mask


def db_batch(shape=(3, 2, 16, 40), seed=0):
    "dB-like values: a large negative offset per clip and channel, rows with different spreads."
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(2, 20, shape[:-1] + (1,)) - rng.uniform(20, 90, shape[:2] + (1, 1))
    return x.astype(np.float32)


def numpy_instance(x, axes, eps=1e-5):
    "Two-pass float64 statistics, one clip at a time."
    x = x.astype(np.float64)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        clip = x[i]
        local = tuple(a - 1 for a in axes)
        mean = clip.mean(local, keepdims=True)
        std = np.sqrt(((clip - mean) ** 2).mean(local, keepdims=True))
        out[i] = (clip - mean) / np.maximum(std, eps)
    return out


@pytest.mark.parametrize("axes", [(2, 3), (3,), (1, 2, 3), (2,)])
def test_matches_numpy_per_clip(axes, device):
    x = db_batch()
    out = instance_norm(torch.from_numpy(x).to(device), axes)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.cpu().numpy(), numpy_instance(x, axes), rtol=1e-5, atol=1e-5)


def test_transform_keeps_type_and_metadata(device):
    x = db_batch()
    spec = AudioSpectrogram(torch.from_numpy(x).to(device), sr=16000, hop_length=160, to_db=True, mel=True)
    out = InstanceSpecNorm(axes=(3,))(spec)
    assert type(out) is AudioSpectrogram
    assert (out.sr, out.hop_length, out.to_db, out.mel) == (16000, 160, True, True)
    np.testing.assert_allclose(out.cpu().as_subclass(torch.Tensor).numpy(), numpy_instance(x, (3,)), atol=1e-5)


def test_item_is_a_batch_of_one():
    x = db_batch()
    item = InstanceSpecNorm()(AudioSpectrogram(torch.from_numpy(x[1]), sr=16000))
    assert item.shape == x.shape[1:]
    np.testing.assert_allclose(item.as_subclass(torch.Tensor).numpy(), numpy_instance(x, (2, 3))[1], atol=1e-5)


def test_plain_tensor_passes_through():
    x = torch.randn(2, 1, 8, 10)
    assert InstanceSpecNorm()(x) is x


def test_padded_batch_with_lengths_ignores_padding(device):
    x = db_batch((3, 1, 8, 50))
    lengths = [50, 31, 4]
    for i, n in enumerate(lengths):
        x[i, ..., n:] = -100.0  # padding that would shift the statistics
    spec = AudioSpectrogram(torch.from_numpy(x).to(device), sr=16000, lengths=torch.tensor(lengths))
    out = InstanceSpecNorm()(spec).cpu().as_subclass(torch.Tensor).numpy()
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(out[i, ..., :n], numpy_instance(x[i : i + 1, ..., :n], (2, 3))[0], atol=1e-5)
        assert (out[i, ..., n:] == 0).all()


def test_mask_attribute_and_functional_mask_agree():
    x = torch.from_numpy(db_batch((2, 1, 8, 30)))
    mask = lengths_to_mask([30, 12], 30)
    via_attr = InstanceSpecNorm(axes=(3,))(AudioSpectrogram(x, mask=mask)).as_subclass(torch.Tensor)
    direct = instance_norm(x, (3,), mask=mask)
    torch.testing.assert_close(via_attr, direct)
    ref = numpy_instance(x[1:, ..., :12].numpy(), (3,))[0]
    np.testing.assert_allclose(direct[1, ..., :12].numpy(), ref, atol=1e-5)


def test_fully_masked_clip_gives_zeros():
    out = instance_norm(torch.randn(2, 1, 4, 6), mask=lengths_to_mask([6, 0], 6))
    assert torch.isfinite(out).all() and (out[1] == 0).all()


@pytest.mark.parametrize("axes", [(2, 3), (3,), (1, 2, 3)])
@pytest.mark.parametrize("masked", [False, True])
def test_constant_spectrogram_gives_exact_zeros(axes, masked, device):
    # Silence at a dB level that is not a round float32: exact zeros, not rounding noise amplified by the floor.
    x = torch.full((2, 2, 64, 3001), -37.3, device=device)
    out = instance_norm(x, axes, mask=lengths_to_mask([3001, 1234], 3001).to(device) if masked else None)
    assert (out == 0).all()


def test_std_floor_bounds_the_output():
    x = torch.zeros(1, 1, 4, 10, dtype=torch.float64)
    x[..., 0] = 1e-9  # std ~3e-10, far under the floor
    out = instance_norm(x, eps=1e-5)
    np.testing.assert_allclose(out[..., 0].numpy(), (1e-9 - 1e-10) / 1e-5)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 1, 4, 10)
    with pytest.raises(ValueError, match="axes"):
        instance_norm(x, axes=(0, 2))
    with pytest.raises(ValueError, match=r"shape \(4, 10\)"):
        instance_norm(x[0, 0])
    with pytest.raises(ValueError, match=r"mask of shape \(3, 1, 1, 10\)"):
        instance_norm(x, mask=torch.ones(3, 1, 1, 10, dtype=torch.bool))
    x[1, 0, 2, 3] = float("nan")
    norm = InstanceSpecNorm()
    norm(AudioSpectrogram(x))
    with pytest.raises(ValueError, match=r"InstanceSpecNorm: 1 of the 1 batches .*NaN or Inf.*shape \(2, 1, 4, 10\)"):
        norm.check()


@pytest.mark.parametrize("eps", [0, -1, float("nan"), float("inf")])
def test_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match=f"eps must be a finite number > 0, got {eps}"):
        InstanceSpecNorm(eps=eps)
    with pytest.raises(ValueError, match="eps must be"):
        instance_norm(torch.zeros(1, 1, 2, 3), eps=eps)


@pytest.mark.parametrize("axes", [(5,), (-5,), (0,), (2, 2), (), ("a",)])
def test_axes_out_of_range_or_repeated_are_named(axes):
    with pytest.raises(ValueError, match="axes"):
        InstanceSpecNorm(axes=axes)


@pytest.mark.parametrize("axes", [(2, 3), (3,)])
@pytest.mark.parametrize("masked", [False, True])
def test_values_whose_squares_overflow_give_nan_and_are_reported(axes, masked, device):
    "Values of 1e20 beside an ordinary clip: that clip's outputs are NaN (not silent zeros), the other is exact."
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 8, 50, generator=g) * 10 - 50
    x[1] *= 2e18
    x = x.to(device)
    mask = torch.ones(2, 1, 1, 50, dtype=torch.bool, device=device) if masked else None
    out = instance_norm(x, axes, mask=mask).cpu()
    assert torch.isnan(out[1]).all()
    np.testing.assert_allclose(out[0].numpy(), numpy_instance(x[:1].cpu().numpy(), axes)[0], atol=1e-5)
    norm = InstanceSpecNorm(axes)
    spec = AudioSpectrogram(x)
    if masked:
        spec.mask = mask
    norm(spec)
    with pytest.raises(ValueError, match=r"InstanceSpecNorm: 1 of the 1 batches .*NaN or Inf"):
        norm.check()


def test_float16_with_large_spread_is_exact_and_not_reported():
    # std 400: the variance 1.6e5 does not fit float16; statistics are float32, the output float16
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 1, 8, 50, generator=g) * 400).half()
    norm = InstanceSpecNorm()
    out = norm(AudioSpectrogram(x)).as_subclass(torch.Tensor)
    assert out.dtype == torch.float16
    ref = numpy_instance(x.float().numpy(), (2, 3))
    np.testing.assert_allclose(out.float().numpy(), ref, atol=2e-3)
    norm.check()  # no NaN or Inf: nothing to report
