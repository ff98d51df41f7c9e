"""PCEN and TrainablePCEN against librosa.pcen (the reference), the recursion against scipy's lfilter."""

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.functional import _smooth_chunked, _smooth_scan
from specnorm.pcen import PCEN, TrainablePCEN, pcen, pcen_smoothing_coef
from specnorm.spectrogram import AudioToSpec

RTOL = 1e-4  # the tolerance against librosa for float32 input


def mel_energies(shape=(2, 1, 24, 150), seed=0):
    "Linear mel-like energies spanning several decades, with a loud stretch in the middle."
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.5, 1.0, shape) * 10 ** rng.uniform(-3, 3, shape[:-1] + (1,))
    x[..., 60:90] *= 30
    return x.astype(np.float32)


def assert_close_to_librosa(ours, ref):
    np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "params",
    [
        {},
        dict(gain=0.8, bias=10.0, power=0.25, time_constant=0.06, eps=1e-3),
        dict(power=0.0),
        dict(bias=0.0),
        dict(b=0.3),
        dict(b=1.0),
    ],
)
def test_matches_librosa(params, device):
    x = mel_energies()
    ref = librosa.pcen(x, sr=16000, hop_length=160, axis=-1, **params)
    out = pcen(torch.from_numpy(x).to(device), sr=16000, hop_length=160, **params)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_close_to_librosa(out.cpu().numpy(), ref)


@pytest.mark.parametrize("max_size", [2, 3, 5])
def test_max_filter_matches_librosa(max_size, device):
    x = mel_energies((1, 1, 24, 80))
    ref = librosa.pcen(x[0, 0], sr=22050, hop_length=512, max_size=max_size)  # 2-D: frequency is axis 0
    out = pcen(torch.from_numpy(x).to(device), max_size=max_size)
    assert_close_to_librosa(out[0, 0].cpu().numpy(), ref)


@pytest.mark.parametrize("smooth", [_smooth_chunked, _smooth_scan])
@pytest.mark.parametrize("n_frames", [1, 31, 32, 33, 1000])
def test_recursions_match_scipy_lfilter(smooth, n_frames):
    "Both vectorised recursions (CPU chunks, GPU scan) against scipy's sequential filter, per-channel b."
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, n_frames)) * 100
    b = np.array([0.02, 0.3, 1.0])
    ref = np.stack(
        [scipy.signal.lfilter([bb], [1, bb - 1], x[:, i], zi=np.full((2, 1), 1 - bb))[0] for i, bb in enumerate(b)], 1
    )
    out = smooth(torch.from_numpy(x).float(), torch.from_numpy(b).float()[:, None])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)


def test_smoothing_coefficient_is_librosas():
    "librosa given our b computes what librosa computes from the time constant, and b < 1 / t."
    x = mel_energies((1, 1, 4, 200))[0, 0]
    for tc, sr, hop in [(0.4, 22050, 512), (0.06, 16000, 160), (1.0, 8000, 80)]:
        b = pcen_smoothing_coef(tc, sr, hop)
        assert 0 < b < hop / (tc * sr)
        np.testing.assert_allclose(
            librosa.pcen(x, b=b), librosa.pcen(x, sr=sr, hop_length=hop, time_constant=tc), rtol=1e-12
        )


def test_transform_reads_sr_and_hop_from_metadata(device):
    x = mel_energies()
    spec = AudioSpectrogram(torch.from_numpy(x).to(device), sr=16000, hop_length=160, mel=True, to_db=False)
    out = PCEN()(spec)  # the arguments' 22050 / 512 must not be used
    assert type(out) is AudioSpectrogram
    assert (out.sr, out.hop_length, out.mel, out.to_db, out.pcen) == (16000, 160, True, False, True)
    assert spec.to_db is False and not hasattr(spec, "pcen")  # the input's metadata is untouched
    assert_close_to_librosa(
        out.cpu().as_subclass(torch.Tensor).numpy(), librosa.pcen(x, sr=16000, hop_length=160, axis=-1)
    )


def test_transform_falls_back_to_its_arguments():
    x = mel_energies((1, 24, 50))
    out = PCEN(sr=8000, hop_length=80, time_constant=0.1)(AudioSpectrogram(torch.from_numpy(x)))
    assert_close_to_librosa(
        out.as_subclass(torch.Tensor).numpy(), librosa.pcen(x, sr=8000, hop_length=80, time_constant=0.1, axis=-1)
    )


def test_after_audio_to_spec_on_a_tone():
    sr, t = 16000, np.arange(16000) / 16000
    audio = AudioTensor(torch.from_numpy(0.3 * np.sin(2 * np.pi * 1000 * t)).float()[None], sr=sr)
    spec = AudioToSpec(mel=True, to_db=False, sample_rate=sr, n_mels=40, hop_length=160)(audio)
    out = PCEN()(spec)
    ref = librosa.pcen(spec.as_subclass(torch.Tensor).numpy(), sr=sr, hop_length=160, axis=-1)
    assert_close_to_librosa(out.as_subclass(torch.Tensor).numpy(), ref)
    assert out[0].mean(-1).argmax() == spec[0].mean(-1).argmax()  # the tone's band stays the loudest


def test_bad_inputs_raise_clear_errors():
    db = AudioSpectrogram(torch.randn(1, 8, 20), sr=16000, hop_length=160, to_db=True)
    with pytest.raises(ValueError, match="to_db=True"):
        PCEN()(db)
    # bad values are counted on the device and reported by check(), naming the transform and the batch
    norm = PCEN()
    norm(AudioSpectrogram(torch.rand(1, 8, 20)))
    norm(AudioSpectrogram(torch.randn(1, 8, 20)))  # negative values
    with pytest.raises(ValueError, match=r"PCEN: 1 of the 2 batches .*negative, NaN or Inf inputs.*batch 1 "):
        norm.check()
    norm.check()  # the check starts over
    x = torch.rand(1, 8, 20)
    x[0, 3, 4] = float("nan")
    norm(AudioSpectrogram(x))
    with pytest.raises(ValueError, match=r"PCEN: 1 of the 1 batches .*batch 0 .*shape \(1, 8, 20\)"):
        norm.check()
    assert torch.isnan(pcen(x)).any()  # the function propagates NaN, as documented
    with pytest.raises(ValueError, match="b must be between 0 and 1"):
        pcen(torch.rand(8, 20), b=1.5)
    with pytest.raises(ValueError, match="gain"):
        PCEN(gain=-1)
    plain = torch.rand(1, 1, 8, 20)
    assert PCEN()(plain) is plain


# TrainablePCEN


def test_trainable_at_init_equals_pcen_and_librosa(device):
    x = torch.from_numpy(mel_energies()).to(device)
    frontend = TrainablePCEN(24, sr=16000, hop_length=160, gain=0.9, bias=3.0, power=0.3).to(device)
    with torch.no_grad():
        out = frontend(x)
    fixed = pcen(x, sr=16000, hop_length=160, gain=0.9, bias=3.0, power=0.3)
    torch.testing.assert_close(out, fixed, rtol=1e-5, atol=0)
    ref = librosa.pcen(x.cpu().numpy(), sr=16000, hop_length=160, gain=0.9, bias=3.0, power=0.3, axis=-1)
    assert_close_to_librosa(out.cpu().numpy(), ref)


def test_trainable_parameters_are_per_channel():
    "Channel f with its own parameters equals librosa run on that row with those values."
    n = 6
    x = mel_energies((2, 1, n, 60))
    frontend = TrainablePCEN(n)
    gains, biases, powers, bs = (np.linspace(lo, hi, n) for lo, hi in [(0.5, 1.0), (0.5, 4), (0.2, 0.6), (0.01, 0.5)])
    with torch.no_grad():
        for p, v in zip(
            (frontend.log_gain, frontend.log_bias, frontend.log_power, frontend.log_b), (gains, biases, powers, bs)
        ):
            p.copy_(torch.from_numpy(np.log(v)))
        out = frontend(torch.from_numpy(x)).numpy()
    for f in range(n):
        ref = librosa.pcen(x[:, :, f], gain=gains[f], bias=biases[f], power=powers[f], b=bs[f], axis=-1)
        assert_close_to_librosa(out[:, :, f], ref)


def test_gradients_flow_to_every_parameter_and_the_input(device):
    frontend = TrainablePCEN(24).to(device)
    x = torch.from_numpy(mel_energies()).to(device).requires_grad_()
    frontend(x).square().mean().backward()
    for name, p in [*frontend.named_parameters(), ("input", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_a_training_step_moves_the_output_towards_a_target():
    torch.manual_seed(0)
    frontend = TrainablePCEN(24)
    x = torch.from_numpy(mel_energies())
    target = pcen(x, gain=0.6, bias=1.0, power=0.4, b=0.1)
    opt = torch.optim.Adam(frontend.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        loss = (frontend(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_trainable_checks_the_channel_count():
    with pytest.raises(ValueError, match=r"\[\.\.\., 24, T\], got shape \(2, 1, 12, 50\)"):
        TrainablePCEN(24)(torch.rand(2, 1, 12, 50))
    with pytest.raises(ValueError, match="bias must be positive"):
        TrainablePCEN(24, bias=0)
    frozen = TrainablePCEN(24, learn_smoothing=False)
    assert not frozen.log_b.requires_grad and frozen.log_gain.requires_grad


def test_in_a_dataloader_after_audio_to_spec(esc50_like):
    from specnorm.data import get_dls

    df, path = esc50_like
    a2s = AudioToSpec(mel=True, to_db=False, sample_rate=16000, n_mels=32, hop_length=160)
    dls = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, batch_tfms=[PCEN(), a2s])  # sorted by order
    x, _ = dls.one_batch()
    assert type(x) is AudioSpectrogram and x.shape == (4, 1, 32, 51) and x.pcen and not x.to_db
    spec = a2s(AudioTensor(dls.one_batch()[0].new_zeros(1, 8000), sr=16000))  # silence: PCEN gives zeros
    assert (PCEN()(spec) == 0).all()
