"""Valid lengths through the pipeline (issue 14): padding never counts, and padded positions hold the floor.

How the frames that straddle a clip's end count: a spectrogram frame is valid when its centre lies in the
clip's samples (`spectrogram.frame_lengths`), so a padded clip keeps exactly the frames the clip alone gives.
The frames within `n_fft / 2` samples of an end see zero padding in the batch but torchaudio's reflection
of the clip alone: they are the only frames that differ. The exactness tests give each clip `n_fft / 2 + 1`
silent samples at both ends (the reflection reaches one sample further in), so those frames are equal too, and
compare with float64 numpy statistics of the clips alone at float32 rounding (rtol 1e-5);
`test_clip_edges_change_only_the_straddling_frames` bounds the effect of real clip edges.
"""

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import no_host_reads, tone, write_audio

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.data import get_dls
from specnorm.drift import NormDriftMonitor
from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES, has_padding, lengths_to_mask, sliding_norm, valid_mask
from specnorm.instance import InstanceSpecNorm
from specnorm.normalize import AudioNormalize, SpecNormalize
from specnorm.signal import ResizeSignal
from specnorm.sliding import SlidingSpecNorm, padded_sliding_norm
from specnorm.spectrogram import AudioToMFCC, AudioToSpec, frame_lengths
from specnorm.stats import compute_stats

SR, N_FFT, HOP = 8000, 400, 200
# 0.3-0.9 s clips padded to 1 s: the centred padding `(8000 - n) // 2` is a multiple of the hop, so the
# batch's frames fall on the clips' own frames ('zeros' and 'zeros_after' padding alike).
SECONDS = (0.3, 0.5, 0.7, 0.9)


def a2s(**kwargs):
    return AudioToSpec(n_fft=N_FFT, hop_length=HOP, **kwargs)


def clip(i, seconds, edge=N_FFT // 2 + 1):
    "A tone in noise, `edge` silent samples at both ends (the reflection reaches n_fft / 2 + 1 in: see the docstring)."
    rng = np.random.default_rng(i)
    n = round(seconds * SR)
    x = tone(300 * (i % 4 + 1), SR, seconds, amplitude=0.1 * (i + 1)) + 0.01 * rng.standard_normal((1, n))
    x[:, :edge] = 0
    x[:, n - edge :] = 0
    return x.astype(np.float32)


def digits_like(root, edge=N_FFT // 2 + 1):
    "Eight 8 kHz clips of 0.3-0.9 s (like spoken digits), two folds; returns the table and the clips."
    (root / "audio").mkdir(parents=True)
    rows, clips = [], {}
    for i in range(8):
        x = clip(i, SECONDS[i % 4], edge)
        write_audio(root / "audio" / f"{i}.wav", x, SR)
        rows.append(dict(filename=f"{i}.wav", fold=1 + i // 4, category=f"c{i % 2}"))
        clips[f"{i}.wav"] = sf.read(root / "audio" / f"{i}.wav", dtype="float32", always_2d=True)[0].T  # as stored
    return pd.DataFrame(rows), clips


def alone(x, **kwargs):
    "The spectrogram of one clip alone, unpadded (float64 numpy `[1, F, frames]`)."
    return a2s(**kwargs)(AudioTensor(torch.from_numpy(x), sr=SR)).as_subclass(torch.Tensor).double().numpy()


def reference(specs, axes):
    "Float64 numpy mean and population std of the unpadded spectrograms' frames: global, or per row."
    frames = np.concatenate([s.reshape(s.shape[-2], -1) for s in specs], axis=-1)  # [F, all frames]
    over = None if axes == GLOBAL_AXES else -1
    return frames.mean(axis=over), frames.std(axis=over)


def test_frame_lengths_are_the_frames_of_the_clip_alone():
    for n in (1, 199, 200, 201, 2400, 7999, 8000):
        frames = alone(np.ones((1, n), np.float32)).shape[-1] if n >= N_FFT // 2 + 1 else 1 + n // HOP
        assert frame_lengths(n, 0, HOP, 41) == (frames, 0)
        assert frame_lengths(n, 1000, HOP, 41) == (min(frames, 41 - 5), 5)
    lengths, before = torch.tensor([2400, 8000, 4000]), torch.tensor([2800, 0, 1000])
    with no_host_reads():
        got = frame_lengths(lengths, before, HOP, 41)
    assert [t.tolist() for t in got] == [[13, 41, 21], [14, 0, 5]]
    # a frame counts when its centre is inside the clip: pad_before 1100 -> first centre at 1200 (frame 6)
    assert frame_lengths(4000, 1100, HOP, 41) == (20, 6)


@pytest.mark.parametrize("pad_mode", ["zeros", "zeros_after"])
def test_padded_statistics_equal_those_of_the_clips_alone(tmp_path, pad_mode):
    df, clips = digits_like(tmp_path)
    train = [clips[fn] for fn in df.filename[df.fold == 2]]
    specs = [alone(x) for x in train]
    kw = dict(bs=4, num_workers=0, sample_rate=SR, crop_signal_to=1000, pad_mode=pad_mode)
    dls = get_dls(df, tmp_path / "audio", batch_tfms=[a2s()], fold=1, **kw)
    x, _ = dls.valid.one_batch()
    assert x.shape[-1] == 41 and sorted(x.lengths.tolist()) == [13, 21, 29, 37]  # 1 + samples // hop each
    glob, chan = compute_stats(dls.train, progress=False)
    for rec, axes in ((glob, GLOBAL_AXES), (chan, CHANNEL_AXES)):
        mean, std = reference(specs, axes)
        np.testing.assert_allclose(rec.mean.double().flatten().cpu().numpy(), mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(rec.std.double().flatten().cpu().numpy(), std, rtol=1e-5, atol=1e-4)
    # SpecNormalize's setups: the same statistics; padded frames of a normalized batch are 0
    for axes in (GLOBAL_AXES, CHANNEL_AXES):
        norm = SpecNormalize(axes=axes, progress=False)
        dls = get_dls(df, tmp_path / "audio", batch_tfms=[a2s(), norm], fold=1, **kw)
        mean, std = reference(specs, axes)
        np.testing.assert_allclose(norm.mean.double().flatten().cpu().numpy(), mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(norm.std.double().flatten().cpu().numpy(), std, rtol=1e-5, atol=1e-4)
        x, _ = dls.valid.one_batch()
        assert (x.as_subclass(torch.Tensor)[~valid_mask(x).expand(x.shape)] == 0).all()
    # NormDriftMonitor: the new data's statistics leave the padding out too
    monitor = NormDriftMonitor(reference=chan, warn=False)
    monitor.scan(get_dls(df, tmp_path / "audio", batch_tfms=[a2s()], fold=2, **kw).valid)
    mean, std = reference(specs, CHANNEL_AXES)
    np.testing.assert_allclose(monitor.new_stats.mean.double().flatten().cpu().numpy(), mean, rtol=1e-5, atol=1e-4)
    assert monitor.report.score < 1e-6


@pytest.mark.parametrize("fast", [True, False])
def test_spectrogram_items_collate_their_lengths(tmp_path, fast):
    "AudioToSpec as an item transform: the batch gets every item's frames, not the first item's."
    df, _ = digits_like(tmp_path)
    kw = dict(bs=4, num_workers=0, sample_rate=SR, crop_signal_to=1000, shuffle=False, fast=fast)
    x, _ = get_dls(df, tmp_path / "audio", item_tfms=[a2s()], **kw).valid.one_batch()
    assert isinstance(x, AudioSpectrogram) and x.lengths.tolist() == [13, 21, 29, 37]
    assert x.pad_before.tolist() == [14, 10, 6, 2]  # (8000 - samples) // 2 // hop: centred padding


def padded_batch(clips, crop_ms=1000, pad_mode="zeros"):
    "The clips padded by `ResizeSignal` (validation: centred) and collated as `AudioDL` does."
    items = [ResizeSignal(crop_ms, pad_mode)(AudioTensor(torch.from_numpy(x), sr=SR)) for x in clips]
    x = AudioTensor(torch.stack([t.as_subclass(torch.Tensor) for t in items]), sr=SR)
    x.lengths = torch.tensor([t.lengths for t in items])
    x.pad_before = torch.tensor([t.pad_before for t in items])
    return x


def per_clip(spec):
    "The valid frames of each clip of a padded spectrogram batch, as float64 numpy arrays."
    first, n = spec.pad_before.tolist(), spec.lengths.tolist()
    return [
        spec[i].as_subclass(torch.Tensor)[..., f : f + k].double().cpu().numpy()
        for i, (f, k) in enumerate(zip(first, n))
    ]


@pytest.mark.parametrize("pad_mode", ["zeros", "zeros_after"])
def test_per_clip_normalizations_use_the_valid_frames_only(device, pad_mode):
    clips = [clip(i, s) for i, s in enumerate(SECONDS)]
    wave = padded_batch(clips, pad_mode=pad_mode)
    wave.lengths, wave.pad_before = wave.lengths.to(device), wave.pad_before.to(device)
    wave = AudioTensor(
        wave.as_subclass(torch.Tensor).to(device), sr=SR, lengths=wave.lengths, pad_before=wave.pad_before
    )
    to_spec, inorm = a2s(), InstanceSpecNorm()
    snorm, anorm = SlidingSpecNorm(window=7, norm_vars=True), AudioNormalize()
    to_spec(wave)  # device copies of the pipeline made outside the guard
    with no_host_reads():
        spec = to_spec(wave)
        outs = {"instance": inorm(spec), "sliding": snorm(spec), "audio": anorm(wave)}
    for name, out in outs.items():
        assert (out.as_subclass(torch.Tensor)[~valid_mask(out).expand(out.shape)] == 0).all(), name
    for x, s_here, got_i, got_s in zip(clips, per_clip(spec), per_clip(outs["instance"]), per_clip(outs["sliding"])):
        # the valid frames are the clip's own spectrogram (on CUDA to cuFFT's rounding: ~2e-3 dB in quiet bins,
        # where padding that leaked in would move values by decibels)
        np.testing.assert_allclose(s_here, alone(x), rtol=1e-5, atol=1e-2)
        # normalized against the spectrogram this device made: per-clip and 7-frame stds magnify cuFFT's
        # last-digit differences from the CPU's
        want_i = (s_here - s_here.mean()) / max(s_here.std(), 1e-5)
        np.testing.assert_allclose(got_i, want_i, atol=1e-4)
        want_s = sliding_norm(torch.from_numpy(s_here), window=7, norm_vars=True).numpy()
        np.testing.assert_allclose(got_s, want_s, atol=1e-4)
    # AudioNormalize: each waveform standardized over its own samples, the padding stays 0
    audio = outs["audio"].as_subclass(torch.Tensor).cpu().double().numpy()
    for i, x in enumerate(clips):
        f = int(wave.pad_before[i])
        want = (x.astype(np.float64) - x.mean(dtype=np.float64)) / x.std(dtype=np.float64)
        np.testing.assert_allclose(audio[i, :, f : f + x.shape[-1]], want, atol=1e-5)
    # an item (int lengths), as AudioNormalize runs in item_tfms
    item = ResizeSignal(1000, pad_mode)(AudioTensor(torch.from_numpy(clips[0]), sr=SR))
    got = AudioNormalize()(item).as_subclass(torch.Tensor).double().numpy()
    want = (clips[0] - clips[0].mean(dtype=np.float64)) / clips[0].std(dtype=np.float64)
    np.testing.assert_allclose(got[:, item.pad_before : item.pad_before + item.lengths], want, atol=1e-5)
    assert (got[:, : item.pad_before] == 0).all() and (got[:, item.pad_before + item.lengths :] == 0).all()


def test_statistics_and_spec_normalize_of_padded_batches_read_nothing_on_the_host(device):
    clips = [clip(i, s) for i, s in enumerate(SECONDS)]
    wave = padded_batch(clips)
    spec = a2s()(wave)
    spec = AudioSpectrogram(
        spec.as_subclass(torch.Tensor).to(device),
        sr=SR,
        lengths=spec.lengths.to(device),
        pad_before=spec.pad_before.to(device),
    )
    (chan,) = compute_stats([spec], red_dims=[CHANNEL_AXES], progress=False)
    norm, monitor = SpecNormalize.from_stats(chan), NormDriftMonitor(reference=chan, warn=False)
    norm(spec)  # the device copies of the statistics are made on first use
    recorder = type(chan)(CHANNEL_AXES)
    with no_host_reads():
        out = norm(spec)
        recorder.update(spec, mask=valid_mask(spec))
        monitor.update(spec)
    assert (out.as_subclass(torch.Tensor)[~valid_mask(out).expand(out.shape)] == 0).all()
    mean, std = reference([alone(x) for x in clips], CHANNEL_AXES)
    for rec in (recorder, monitor.new_stats):
        np.testing.assert_allclose(rec.mean.double().flatten().cpu().numpy(), mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(rec.std.double().flatten().cpu().numpy(), std, rtol=1e-5, atol=1e-4)


def test_resample_scales_the_valid_samples():
    from specnorm.signal import Resample

    item = ResizeSignal(1000, "zeros")(AudioTensor(torch.ones(1, 2400), sr=SR))  # 2800 zeros, 2400 samples
    up = Resample(16000)(item)
    assert (up.lengths, up.pad_before) == (4800, 5600) and up.shape[-1] == 16000
    m = valid_mask(up)
    assert m.sum() == 4800 and torch.allclose(up[0, 5700:10300], torch.ones(4600), atol=2e-2)


def test_padded_frames_of_a_spectrogram_hold_what_silence_gives():
    clips = [clip(i, s, edge=0) for i, s in enumerate(SECONDS)]
    wave = padded_batch(clips)
    with no_host_reads():
        power_db, top, mag, linear = (
            a2s()(wave),
            a2s(top_db=40)(wave),
            a2s(power=1)(wave),
            a2s(to_db=False)(wave),
        )
    outside = ~valid_mask(power_db).expand(power_db.shape)
    assert outside.any()
    # torchaudio's AmplitudeToDB of a power spectrogram of zeros: 10 log10(1e-10) = -100 dB
    assert (power_db.as_subclass(torch.Tensor)[outside] == -100).all()
    assert (mag.as_subclass(torch.Tensor)[outside] == -200).all()  # magnitude: 20 log10(1e-10)
    assert (linear.as_subclass(torch.Tensor)[outside] == 0).all()
    # with top_db, silence is clamped to each clip's max - top_db, as AmplitudeToDB clamps it
    floor = top.as_subclass(torch.Tensor).amax((1, 2, 3), keepdim=True) - 40
    assert torch.equal(top.as_subclass(torch.Tensor)[outside], floor.expand(top.shape)[outside])
    # inside the clips nothing changed: the frames equal the unpadded transform's
    plain = a2s()(AudioTensor(wave.as_subclass(torch.Tensor), sr=SR))
    inside = ~outside
    assert torch.equal(power_db.as_subclass(torch.Tensor)[inside], plain.as_subclass(torch.Tensor)[inside])
    # MFCC: the coefficients of silence
    mfcc = AudioToMFCC(n_mfcc=13, sample_rate=SR, melkwargs=dict(n_fft=N_FFT, hop_length=HOP, n_mels=40))
    out = mfcc(wave)
    silence = mfcc(AudioTensor(torch.zeros(1, 1, 2 * N_FFT), sr=SR))[0, 0, :, 0]
    pad = out.as_subclass(torch.Tensor)[0, 0, :, : int(out.pad_before[0])]
    assert out.pad_before[0] > 0 and torch.equal(pad, silence[:, None].expand_as(pad))


def test_clip_edges_change_only_the_straddling_frames():
    "With signal up to the clips' ends, only the frames within n_fft / 2 of an end differ from the clip alone."
    clips = [clip(i, s, edge=0) for i, s in enumerate(SECONDS)]
    spec = a2s()(padded_batch(clips))
    reach = -(-(N_FFT // 2) // HOP)  # frames whose window crosses an end: 1 at each end here
    differ = []
    for x, got in zip(clips, per_clip(spec)):
        want = alone(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got[..., reach:-reach], want[..., reach:-reach], rtol=1e-5, atol=1e-3)
        differ.append(np.abs(got - want).max(axis=-2).squeeze(0) > 1e-3)
    assert any(d[0] or d[-1] for d in differ)  # the reflection differs from zeros at the ends
    # the statistics then differ by those frames' weight (2 of 13-37 frames per clip here): the stated
    # tolerance for such clips is 0.3 dB on the mean and 5% on the std (measured: 0.2 dB and 4.4%)
    got = compute_stats([spec], red_dims=[GLOBAL_AXES], progress=False)[0]
    mean, std = reference([alone(x) for x in clips], GLOBAL_AXES)
    assert abs(got.mean.item() - mean.item()) < 0.3 and abs(got.std.item() / std.item() - 1) < 0.05


def test_padded_sliding_norm_equals_sliding_norm_of_each_clip():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 50) * 10 - 50
    lengths, before = torch.tensor([50, 20, 3]), torch.tensor([0, 7, 40])
    for center in (True, False):
        for norm_vars in (False, True):
            for window in (1, 2, 5, 300):
                with no_host_reads():
                    out = padded_sliding_norm(x, lengths, before, window, center, norm_vars, min_window=10)
                mask = lengths_to_mask(lengths, 50, before).expand(x.shape)
                assert (out[~mask] == 0).all()
                for i in range(3):
                    f, n = int(before[i]), int(lengths[i])
                    want = sliding_norm(x[i, ..., f : f + n].double(), window, center, norm_vars, min_window=10)
                    torch.testing.assert_close(out[i, ..., f : f + n].double(), want, rtol=0, atol=1e-5)


def test_valid_mask_of_items_and_batches():
    item = ResizeSignal(100, "zeros")(AudioTensor(torch.ones(1, 400), sr=8000))  # 800 samples, 200 before
    assert item.lengths == 400 and item.pad_before == 200
    m = valid_mask(item)
    assert m.shape == (1, 800) and m.sum() == 400 and m[0, 200] and not m[0, 199] and not m[0, 600]
    spec = AudioSpectrogram(torch.zeros(2, 1, 3, 6))
    spec.lengths, spec.pad_before = torch.tensor([2, 6]), torch.tensor([1, 0])
    assert valid_mask(spec).shape == (2, 1, 1, 6) and valid_mask(spec).sum() == 8
    assert valid_mask(AudioSpectrogram(torch.zeros(2, 1, 3, 6))) is None


# -- defaults that fit the data -----------------------------------------------------------------------


def _folder(root, sr, seconds):
    (root / "audio").mkdir(parents=True)
    rows = []
    for i, s in enumerate(seconds):
        write_audio(root / "audio" / f"{i}.wav", tone(440, sr, s, amplitude=0.3), sr)
        rows.append(dict(filename=f"{i}.wav", fold=1 + i % 2, category=f"c{(i // 2) % 2}"))
    return pd.DataFrame(rows)


def test_defaults_on_short_8khz_clips(tmp_path):
    seconds = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.85, 0.9]
    df = _folder(tmp_path, 8000, seconds)
    with _no_survey_warning():
        dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0)
    x, _ = dls.valid.one_batch()
    # own rate (no upsampling to 16 kHz), and the 90th percentile of the lengths (0.85 s -> 0.9 s) as the crop
    assert x.sr == 8000 and x.shape[-1] == 7200
    slow, _ = get_dls(df, tmp_path / "audio", bs=2, num_workers=0, fast=False).valid.one_batch()
    assert slow.sr == 8000 and slow.shape[-1] == 7200
    # sample_rate=16000 still resamples, and explicit crops are kept
    x, _ = get_dls(
        df, tmp_path / "audio", bs=2, num_workers=0, sample_rate=16000, crop_signal_to=5000
    ).valid.one_batch()
    assert x.sr == 16000 and x.shape[-1] == 80000
    with pytest.raises(ValueError, match="sample_rate must be a positive int.*'auto' or None, not 'native'"):
        get_dls(df, tmp_path / "audio", sample_rate="native")


@contextlib.contextmanager
def _no_survey_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="survey_audio")
        yield


def test_defaults_warn_when_lengths_vary_a_lot(tmp_path):
    df = _folder(tmp_path, 8000, [0.2, 0.3] + [1.0] * 8)
    with pytest.warns(UserWarning, match="clip lengths vary a lot"):
        dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0)
    assert dls.valid.one_batch()[0].shape[-1] == 8000


def test_defaults_on_5s_clips_at_44k(tmp_path):
    df = _folder(tmp_path, 44100, [5.0] * 4)
    dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0)
    x, _ = dls.valid.one_batch()
    assert x.sr == 16000 and x.shape[-1] == 80000  # downsampled to the 16 kHz cap; 5 s kept whole
    assert x.lengths.tolist() == [80000, 80000]


def test_cli_stats_chooses_the_defaults_from_the_files(tmp_path, capsys):
    from specnorm.cli import main

    df = _folder(tmp_path / "data", 8000, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    (tmp_path / "data" / "meta").mkdir()
    df.to_csv(tmp_path / "data" / "meta" / "esc50.csv", index=False)
    out = tmp_path / "stats.safetensors"
    with pytest.warns(UserWarning, match="clip lengths vary a lot"):  # 0.3 s clips under a 0.8 s crop
        assert main(["stats", "--data", str(tmp_path / "data"), "--bs", "2", "--workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sample rate 8000 Hz (auto), crop 800 ms (auto)" in printed and out.is_file()
    assert main(["stats", "--data", str(tmp_path / "data"), "--sample-rate", "x", "--out", str(out)]) == 2


def test_auto_settings_replace_only_auto(tmp_path):
    from specnorm.data import AUTO_MAX_SAMPLE_RATE, auto_settings

    df = _folder(tmp_path, 48000, [1.0, 1.2, 1.25])
    files = [tmp_path / "audio" / fn for fn in df.filename]
    assert AUTO_MAX_SAMPLE_RATE == 16000
    assert auto_settings(files) == (16000, 1300)  # capped (48 kHz is downsampled); 1.25 s -> 1300 ms
    assert auto_settings(files, "auto", 5000) == (16000, 5000)
    assert auto_settings(files, 22050, "auto") == (22050, 1300)
    assert auto_settings(files, None, None) == (None, None)
    with pytest.raises(ValueError, match="crop_signal_to must be a positive number.*not -1"):
        auto_settings(files, "auto", -1)


def test_lengths_of_another_batch_are_ignored(device):
    "fastai copies metadata into slices and new tensors: `lengths` that do not describe a tensor never mask it."
    batch = AudioTensor(torch.randn(4, 1, 8000, device=device), sr=16000)
    batch.lengths = torch.tensor([8000, 4000, 2000, 8000], device=device)
    batch.pad_before = torch.zeros(4, dtype=torch.int64, device=device)
    a2s = AudioToSpec(sample_rate=16000)
    full = a2s(batch)
    assert full.lengths.shape == (4,) and (full.lengths[1:3] < full.shape[-1]).all()
    one = a2s(batch.new_zeros(1, 8000))  # an item made from the batch: carries the batch's 4 lengths
    assert getattr(one, "lengths", None) is None
    torch.testing.assert_close(
        one.as_subclass(torch.Tensor),
        a2s(AudioTensor(torch.zeros(1, 8000), sr=16000).to(device)).as_subclass(torch.Tensor),
    )
    two = full[:2]  # a slice of a spectrogram batch keeps all 4 lengths: no mask, rather than a wrong one
    assert valid_mask(two) is None and valid_mask(full).shape == (4, 1, 1, full.shape[-1])


@pytest.mark.parametrize("fast", [True, False])
def test_full_batches_skip_the_masks_and_give_the_same_batches(tmp_path, fast):
    "Loaders mark batches whose clips all fill the batch; the transforms then skip their masking passes."
    df = _folder(tmp_path, 8000, [1.0] * 4 + [0.5] * 4)  # two full batches, two padded ones
    norm = SpecNormalize(-50.0, 20.0)
    dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0, fast=fast, shuffle=False, crop_signal_to=1000)
    seen = {True: 0, False: 0}
    for x, _ in dls.train:
        full = bool((x.lengths == x.shape[-1]).all())
        assert has_padding(x) is not full  # marked exactly when every clip is full
        with no_host_reads():
            spec = AudioToSpec()(x)
            out = norm(spec)
        assert has_padding(spec) is not full and has_padding(out) is not full
        # the same batch without the mark takes the masking passes: the same values
        plain = AudioTensor(x.as_subclass(torch.Tensor), sr=x.sr, lengths=x.lengths.clone(), pad_before=x.pad_before)
        want = norm(AudioToSpec()(plain))
        assert has_padding(plain)
        torch.testing.assert_close(out.as_subclass(torch.Tensor), want.as_subclass(torch.Tensor), rtol=0, atol=0)
        seen[full] += 1
    assert seen[True] and seen[False]


def test_lengths_assigned_later_are_masked():
    x = AudioTensor(torch.randn(2, 1, 800), sr=8000)
    x.lengths, x.pad_before = torch.tensor([800, 800]), torch.zeros(2, dtype=torch.int64)
    x.unpadded = x.lengths
    assert not has_padding(x) and valid_mask(x) is None
    x.lengths = torch.tensor([800, 400])  # e.g. a user's own padding: another object, so masked again
    assert has_padding(x) and valid_mask(x)[1, 0].sum() == 400
    y = ResizeSignal(150)(x)  # a transform that sets lengths anew
    assert has_padding(y)
