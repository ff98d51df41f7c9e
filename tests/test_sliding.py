"""SlidingSpecNorm and ShortTimeAudioNormalize against per-frame (per-sample) float64 numpy loops."""

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.instance import instance_norm
from specnorm.sliding import ShortTimeAudioNormalize, SlidingSpecNorm, short_time_rms, sliding_norm, window_bounds


def kaldi_window(t, n, window, center, min_window):
    "The frames `apply-cmvn-sliding` uses for frame `t`, from the rules as Kaldi documents them."
    if center:
        if n <= window:
            return 0, n
        lo = min(max(t - window // 2, 0), n - window)
        return lo, lo + window
    lo, hi = max(t - window, 0), max(t + 1, min_window)
    if hi > n:
        lo, hi = max(lo - (hi - n), 0), n
    return lo, hi


def numpy_sliding(x, window, center=True, norm_vars=False, min_window=100, eps=1e-5):
    "One frame at a time, float64, two-pass statistics over the frame's window."
    x = x.astype(np.float64)
    n = x.shape[-1]
    out = np.empty_like(x)
    for t in range(n):
        lo, hi = kaldi_window(t, n, window, center, min_window)
        part = x[..., lo:hi]
        mean = part.mean(-1)
        out[..., t] = x[..., t] - mean
        if norm_vars:
            std = np.sqrt(((part - mean[..., None]) ** 2).mean(-1))
            out[..., t] = 0 if hi - lo == 1 else out[..., t] / np.maximum(std, eps)
    return out


def db_spec(shape=(2, 1, 6, 90), seed=0):
    rng = np.random.default_rng(seed)
    level = -60 + 20 * np.sin(np.linspace(0, 6, shape[-1]))  # the level drifts within the clip
    return (level + rng.uniform(1, 8, shape[:-1] + (1,)) * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize(
    "window,center,min_window",
    [(7, True, 100), (8, True, 100), (20, False, 5), (20, False, 100), (1, True, 100), (30, False, 1)],
)
@pytest.mark.parametrize("norm_vars", [False, True])
def test_matches_per_frame_numpy_loop(window, center, min_window, norm_vars, device):
    x = db_spec()
    out = sliding_norm(torch.from_numpy(x).to(device), window, center, norm_vars, min_window)
    assert out.dtype == torch.float32 and out.shape == x.shape
    ref = numpy_sliding(x, window, center, norm_vars, min_window)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not hasattr(AF, "sliding_window_cmn"), reason="torchaudio without sliding_window_cmn")
@pytest.mark.parametrize("center", [True, False])
def test_matches_torchaudio_kaldi_port(center):
    x = db_spec((1, 1, 5, 70), seed=1)
    ours = sliding_norm(torch.from_numpy(x), 25, center, True, min_window=10)
    kaldi = AF.sliding_window_cmn(
        torch.from_numpy(x).double().transpose(-1, -2), cmn_window=25, min_cmn_window=10, center=center, norm_vars=True
    ).transpose(-1, -2)
    np.testing.assert_allclose(ours.numpy(), kaldi.numpy(), rtol=1e-5, atol=1e-4)


def test_window_bounds_at_the_edges():
    start, end = window_bounds(7, 4, center=True)
    assert start.tolist() == [0, 0, 0, 1, 2, 3, 3] and end.tolist() == [4, 4, 4, 5, 6, 7, 7]
    start, end = window_bounds(7, 3, center=False, min_window=2)
    assert start.tolist() == [0, 0, 0, 0, 1, 2, 3] and end.tolist() == [2, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("center", [True, False])
def test_window_longer_than_clip_is_whole_clip_normalization(center, device):
    x = torch.from_numpy(db_spec((2, 1, 6, 40))).to(device)
    out = sliding_norm(x, window=300, center=center, norm_vars=True, min_window=100)
    torch.testing.assert_close(out, instance_norm(x, axes=(3,)), rtol=1e-5, atol=1e-5)


def test_db_offset_does_not_cancel():
    # Small variations on a large offset over a long clip: float32 running sums would lose them.
    rng = np.random.default_rng(2)
    x = (-1000 + 0.01 * rng.standard_normal((1, 1, 2, 3000))).astype(np.float32)
    out = sliding_norm(torch.from_numpy(x), window=300, norm_vars=True)
    np.testing.assert_allclose(out.numpy(), numpy_sliding(x, 300, norm_vars=True), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("center,min_window", [(True, 100), (False, 5)])
def test_values_whose_variance_overflows_float32_stay_exact(center, min_window, device):
    "Values of 1e20 (squares of 1e40): the variance is float64, and so is its inverse square root."
    x = db_spec((2, 1, 4, 60), seed=5) * np.float32(2e18)
    out = sliding_norm(torch.from_numpy(x).to(device), 9, center, norm_vars=True, min_window=min_window)
    ref = numpy_sliding(x, 9, center, norm_vars=True, min_window=min_window)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_constant_input_gives_zeros_not_nan():
    x = torch.full((1, 1, 3, 50), -80.3)
    assert (sliding_norm(x, 10, norm_vars=True) == 0).all()


def test_transform_keeps_type_and_metadata(device):
    x = db_spec()
    spec = AudioSpectrogram(torch.from_numpy(x).to(device), sr=16000, hop_length=160, to_db=True)
    out = SlidingSpecNorm(window=30, norm_vars=True)(spec)
    assert type(out) is AudioSpectrogram and (out.sr, out.hop_length, out.to_db) == (16000, 160, True)
    np.testing.assert_allclose(
        out.cpu().as_subclass(torch.Tensor).numpy(), numpy_sliding(x, 30, norm_vars=True), rtol=1e-5, atol=1e-4
    )
    plain = torch.randn(1, 1, 4, 20)
    assert SlidingSpecNorm()(plain) is plain


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 1 frame"):
        SlidingSpecNorm(window=0)
    x = torch.randn(1, 1, 4, 20)
    x[0, 0, 1, 5] = float("inf")
    norm = SlidingSpecNorm()
    norm(AudioSpectrogram(x))
    with pytest.raises(ValueError, match=r"SlidingSpecNorm: 1 of the 1 batches .*NaN or Inf.*shape \(1, 1, 4, 20\)"):
        norm.check()
    with pytest.raises(ValueError, match=r"shape \(1, 1, 4, 0\)"):
        sliding_norm(torch.zeros(1, 1, 4, 0))


def test_every_edge_rule_against_the_loop():
    # Short clips against windows and look-aheads of every relative size: growing, shrinking, shifted
    # and whole-clip windows.
    rng = np.random.default_rng(6)
    for n in (1, 2, 3, 5, 8, 13):
        x = (rng.standard_normal((1, 2, n)) * 5 - 40).astype(np.float32)
        for window in (1, 2, 3, 4, 7, 15):
            for center, min_window in [(True, 100)] + [(False, m) for m in (1, 2, 5, 9, 20)]:
                for norm_vars in (False, True):
                    out = sliding_norm(torch.from_numpy(x), window, center, norm_vars, min_window)
                    np.testing.assert_allclose(
                        out.numpy(),
                        numpy_sliding(x, window, center, norm_vars, min_window),
                        rtol=1e-5,
                        atol=1e-4,
                        err_msg=f"{n=} {window=} {center=} {min_window=}",
                    )


@pytest.mark.parametrize(
    "window,center,min_window", [(2, False, 1), (7, True, 100), (300, True, 100), (30, False, 100)]
)
@pytest.mark.parametrize("norm_vars", [False, True])
def test_long_drifting_clip_stays_accurate(window, center, min_window, norm_vars):
    # 3000 frames with a 40 dB level drift: the error stays at float32 rounding of the dB values (module docstring).
    x = db_spec((1, 1, 3, 3000), seed=4)
    out = sliding_norm(torch.from_numpy(x), window, center, norm_vars, min_window)
    err = np.abs(out.numpy() - numpy_sliding(x, window, center, norm_vars, min_window)).max()
    assert err < (5e-5 if norm_vars else 2e-5)


def test_float64_input_stays_float64_and_exact():
    x = db_spec((1, 1, 3, 400), seed=5).astype(np.float64)
    for norm_vars in (False, True):
        out = sliding_norm(torch.from_numpy(x), 50, True, norm_vars)
        assert out.dtype == torch.float64
        np.testing.assert_allclose(out.numpy(), numpy_sliding(x, 50, True, norm_vars), rtol=1e-9, atol=1e-9)


def test_rows_in_several_blocks(monkeypatch):
    # Large batches go through in blocks of rows: same result, and a NaN in an early block is still found.
    import specnorm.functional as sliding

    x = db_spec((2, 1, 5, 60), seed=7)
    monkeypatch.setattr(sliding, "_BLOCK", 3 * 60 * 8)  # blocks of 3 rows of float64 (6 of float32)
    for norm_vars in (False, True):
        out = sliding_norm(torch.from_numpy(x), 20, True, norm_vars)
        np.testing.assert_allclose(out.numpy(), numpy_sliding(x, 20, True, norm_vars), rtol=1e-5, atol=1e-4)
        bad = torch.from_numpy(x).clone()
        bad[0, 0, 1, 7] = float("nan")
        out = sliding_norm(bad, 20, True, norm_vars)  # NaN propagates to the frames whose window holds it
        assert torch.isnan(out[0, 0, 1]).any() and torch.isfinite(out[0, 0, [0, 2, 3, 4]]).all()
        assert torch.isfinite(out[1]).all()
    wave = torch.from_numpy(db_spec((4, 2, 320), seed=8) / 60)
    monkeypatch.setattr(sliding, "_BLOCK", 3 * 320 * 8)
    for hop in (None, 32, 7):
        out = short_time_rms(wave, 64, hop)
        np.testing.assert_allclose(out.numpy(), numpy_rms(wave.numpy(), 64, hop), rtol=1e-5, atol=1e-7)
        bad = wave.clone()
        bad[0, 1, 100] = float("inf")
        norm = ShortTimeAudioNormalize(64 / 8000, None if hop is None else hop / 8000)
        norm(AudioTensor(bad, sr=8000))
        with pytest.raises(ValueError, match="ShortTimeAudioNormalize: 1 of the 1 batches"):
            norm.check()


# ShortTimeAudioNormalize


def numpy_rms(x, window, hop=None):
    "Per-sample RMS over the centred window (or at hop nodes, linearly interpolated), in float64."
    x = x.astype(np.float64)
    n = x.shape[-1]
    nodes = np.arange(n) if hop is None else np.unique(np.r_[np.arange(0, n, hop), n - 1])
    rms = np.empty(x.shape[:-1] + (len(nodes),))
    for k, t in enumerate(nodes):
        lo, hi = kaldi_window(t, n, window, True, 1)
        rms[..., k] = np.sqrt((x[..., lo:hi] ** 2).mean(-1))
    if hop is not None:
        flat = rms.reshape(-1, len(nodes))
        rms = np.stack([np.interp(np.arange(n), nodes, r) for r in flat]).reshape(x.shape)
    return rms


def numpy_short_time(x, window, hop=None, floor=1e-4):
    return x.astype(np.float64) / np.maximum(numpy_rms(x, window, hop), floor)


@pytest.mark.parametrize("window_s,hop_s", [(0.01, None), (0.01, 0.004), (0.5, None), (0.013, 0.007)])
def test_short_time_matches_numpy(window_s, hop_s, device):
    sr = 2000
    rng = np.random.default_rng(3)
    env = np.where(np.arange(600) < 250, 0.02, 0.7)
    x = (rng.standard_normal((2, 2, 600)) * env).astype(np.float32)
    out = ShortTimeAudioNormalize(window_s, hop_s)(AudioTensor(torch.from_numpy(x).to(device), sr=sr))
    assert type(out) is AudioTensor and out.sr == sr and out.shape == x.shape
    hop = None if hop_s is None else round(hop_s * sr)
    ref = numpy_short_time(x, round(window_s * sr), hop)
    np.testing.assert_allclose(out.cpu().as_subclass(torch.Tensor).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_short_time_evens_out_the_level():
    sr = 8000
    t = np.arange(sr) / sr
    x = np.sin(2 * np.pi * 200 * t) * np.where(t < 0.5, 0.01, 0.8)  # a 38 dB jump half way
    out = ShortTimeAudioNormalize(0.05)(AudioTensor(torch.from_numpy(x).float()[None], sr=sr))[0].numpy()
    quiet, loud = out[800:3200], out[4800:7200]
    assert np.sqrt((quiet**2).mean()) == pytest.approx(1, abs=0.01)
    assert np.sqrt((loud**2).mean()) == pytest.approx(1, abs=0.01)


def test_silence_gives_zeros_and_gain_is_capped():
    x = torch.zeros(1, 2, 400)
    x[0, 1, 200:] = 1e-7  # far below the floor: the gain is 1 / floor, not 1 / rms
    out = ShortTimeAudioNormalize(0.01, floor=1e-4)(AudioTensor(x, sr=8000))
    assert torch.isfinite(out).all() and (out[0, 0] == 0).all()
    torch.testing.assert_close(out[0, 1, 200:].as_subclass(torch.Tensor), torch.full((200,), 1e-3))


def test_short_time_rms_of_a_tone():
    t = torch.arange(16000) / 16000
    rms = short_time_rms(0.5 * torch.sin(2 * torch.pi * 100 * t)[None], window=1600, hop=400)
    torch.testing.assert_close(rms, torch.full_like(rms, 0.5 / np.sqrt(2)), rtol=1e-3, atol=1e-3)


def test_short_time_rms_on_odd_sizes():
    # Clips shorter than the window or the hop, hops that do and do not divide the window and the clip
    # (sums over blocks of samples, or of every sample), a last node closer than a hop.
    rng = np.random.default_rng(9)
    for n in (1, 2, 7, 97, 320, 321):
        x = (rng.standard_normal((2, n)) * np.linspace(0.05, 1, n)).astype(np.float32)
        for window in (1, 5, 64, 1000):
            for hop in (None, 1, 3, 16, 32, 500):
                np.testing.assert_allclose(
                    short_time_rms(torch.from_numpy(x), window, hop).numpy(),
                    numpy_rms(x, window, hop),
                    rtol=1e-5,
                    atol=1e-7,
                    err_msg=f"{n=} {window=} {hop=}",
                )


@pytest.mark.parametrize("hop", [None, 40, 7])
def test_quiet_after_loud_keeps_its_precision(hop):
    # -80 dB after 0 dB: float64 sums of squares keep the quiet part's RMS to float32 precision.
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((1, 8000)) * np.where(np.arange(8000) < 4000, 1.0, 1e-4)).astype(np.float32)
    rms = short_time_rms(torch.from_numpy(x), 400, hop).numpy()
    np.testing.assert_allclose(rms[:, 5000:], numpy_rms(x, 400, hop)[:, 5000:], rtol=1e-5)


def test_short_time_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        ShortTimeAudioNormalize(0)
    with pytest.raises(ValueError, match="empty signal"):
        ShortTimeAudioNormalize(0.1)(AudioTensor(torch.zeros(1, 0), sr=8000))
    x = torch.zeros(1, 100)
    x[0, 3] = float("nan")
    for norm in ShortTimeAudioNormalize(0.1), ShortTimeAudioNormalize(1 / 8000, hop_s=10 / 8000):
        norm(AudioTensor(torch.zeros(1, 100), sr=8000))
        norm(AudioTensor(x, sr=8000))  # with a hop: between the RMS nodes at samples 0, 10, ...
        with pytest.raises(ValueError, match=r"1 of the 2 batches .*batch 1 \(counting from 0\) of shape \(1, 100\)"):
            norm.check()
    plain = torch.randn(1, 100)
    assert ShortTimeAudioNormalize(0.1)(plain) is plain


def test_in_a_dataloader(esc50_like):
    from specnorm.data import get_dls
    from specnorm.spectrogram import AudioToSpec

    df, path = esc50_like
    a2s = AudioToSpec(mel=True, sample_rate=16000, n_mels=32, hop_length=160)
    dls = get_dls(
        df,
        path,
        bs=4,
        num_workers=0,
        crop_signal_to=500,
        item_tfms=[ShortTimeAudioNormalize(0.05)],
        batch_tfms=[SlidingSpecNorm(window=20, norm_vars=True), a2s],
    )
    x, _ = dls.one_batch()
    assert type(x) is AudioSpectrogram and x.shape == (4, 1, 32, 51) and x.sr == 16000
    # every frame is normalized over 20 frames: the per-frame statistics of the output are near 0 and 1
    assert x.mean(-1).abs().max() < 0.5 and torch.isfinite(x).all()


def test_colorbar_says_what_was_removed():
    import matplotlib

    matplotlib.use("Agg")
    x = AudioSpectrogram(torch.randn(1, 1, 8, 40) - 40, sr=16000, hop_length=160, to_db=True)
    label = lambda s: s[0].show().figure.axes[-1].get_ylabel()
    assert label(SlidingSpecNorm(window=10)(x)) == "dB, mean removed"  # only the mean is removed
    assert label(SlidingSpecNorm(window=10, norm_vars=True)(x)) == "standardized"


@pytest.mark.parametrize("hop", [None, 160])
@pytest.mark.parametrize("louder_db,bound", [(40, 3e-7), (80, 2e-6), (100, 1.5e-4)])
def test_quiet_after_a_much_louder_part_is_as_accurate_as_documented(hop, louder_db, bound):
    # the module docstring's figures: 5 s of noise at 16 kHz, 0.1 s windows, the first half louder
    sr = n = 16000 * 5 // 5
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 5 * n)) * np.where(np.arange(5 * n) < 5 * n // 2, 10 ** (louder_db / 20), 1.0)
    x = x.astype(np.float32)
    rms = short_time_rms(torch.from_numpy(x), sr // 10, hop).numpy()
    quiet = slice(5 * n // 2 + sr // 10, None)  # windows that no longer touch the loud part
    err = np.abs(rms[:, quiet] / numpy_rms(x, sr // 10, hop)[:, quiet] - 1).max()
    assert err < bound
