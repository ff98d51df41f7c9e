"""AudioCache: hits, invalidation, and batches identical to the uncached pipeline."""

import os

import numpy as np
import torch
from conftest import tone, write_audio
from fastai.torch_core import set_seed

from specnorm.audio import AudioTensor
from specnorm.cache import AudioCache, preprocess_audio_folder
from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.signal import DownmixMono, Resample
from specnorm.spectrogram import AudioToSpec


def test_cached_waveform_is_the_decoded_resampled_one(tmp_path):
    fn = write_audio(tmp_path / "s.wav", np.concatenate([tone(500, 44100, 0.3), tone(700, 44100, 0.3)]), 44100)
    expected = Resample(16000)(DownmixMono()(AudioTensor.create(fn)))
    cache = AudioCache(tmp_path / "cache", sample_rate=16000)
    first, second = cache(fn), cache(fn)
    assert (cache.misses, cache.hits) == (1, 1)
    for got in (first, second):
        assert isinstance(got, AudioTensor) and got.sr == 16000
        torch.testing.assert_close(got.as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor), rtol=0, atol=0)


def test_changed_source_or_setting_is_a_miss(tmp_path):
    fn = write_audio(tmp_path / "s.wav", tone(500, 22050, 0.2), 22050)
    cache = AudioCache(tmp_path / "cache", sample_rate=16000)
    cache(fn)
    write_audio(fn, tone(900, 22050, 0.3), 22050)  # new content, new size
    os.utime(fn, ns=(1, 1))  # and a different mtime
    changed = cache(fn)
    assert cache.misses == 2 and changed.nsamples == round(0.3 * 16000)
    other = AudioCache(tmp_path / "cache", sample_rate=8000)
    assert other(fn).sr == 8000 and other.misses == 1 and other.folder != cache.folder
    kept = AudioCache(tmp_path / "cache", sample_rate=16000)
    kept(fn)
    assert (kept.hits, kept.misses) == (1, 0)  # a fresh cache object finds the files


def test_preprocess_fills_the_cache(esc50_like, tmp_path):
    df, path = esc50_like
    cache = preprocess_audio_folder([path / f for f in df.filename], tmp_path / "cache", n_workers=2, progress=False)
    assert len(list(cache.folder.glob("*.npy"))) == len(df)
    cache(path / df.filename[0])
    assert cache.hits == 1


def test_batches_with_and_without_cache_are_identical(esc50_like, tmp_path):
    df, path = esc50_like
    tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())]
    kwargs = dict(bs=16, num_workers=0, crop_signal_to=700, batch_tfms=tfms, shuffle=False, fast=False)  # AudioCache
    plain = get_dls(df, path, **kwargs)
    cached = get_dls(df, path, cache_folder=tmp_path / "cache", **kwargs)
    for epoch in range(2):  # the second pass reads the cache
        for dl_plain, dl_cached in [(plain.train, cached.train), (plain.valid, cached.valid)]:
            set_seed(epoch)  # the same random crops on the training split
            xp, yp = dl_plain.one_batch()
            set_seed(epoch)
            xc, yc = dl_cached.one_batch()
            assert type(xc) is type(xp) and xc.sr == xp.sr
            torch.testing.assert_close(xc.as_subclass(torch.Tensor), xp.as_subclass(torch.Tensor), rtol=0, atol=0)
            assert (yp == yc).all()
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(df)
