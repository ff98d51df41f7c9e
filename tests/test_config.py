"""AudioConfig: defaults read from the torchaudio transforms."""

import inspect

import torchaudio.transforms as T

from specnorm.config import AudioConfig


def test_defaults_follow_torchaudio_signatures():
    for cfg, transform in [
        (AudioConfig.BasicSpectrogram(), T.Spectrogram),
        (AudioConfig.BasicMelSpectrogram(), T.MelSpectrogram),
        (AudioConfig.BasicMFCC(), T.MFCC),
    ]:
        for p in inspect.signature(transform).parameters.values():
            if hasattr(cfg, p.name):
                assert getattr(cfg, p.name) == p.default, (type(cfg).__name__, p.name)
    assert AudioConfig.BasicMFCC().n_mfcc == 40


def test_flags_and_overrides():
    assert (AudioConfig.BasicSpectrogram().mel, AudioConfig.BasicSpectrogram().to_db) == (False, True)
    assert AudioConfig.BasicMelSpectrogram(n_mels=64).mel and AudioConfig.BasicMelSpectrogram(n_mels=64).n_mels == 64
    voice = AudioConfig.Voice()
    assert (voice.sample_rate, voice.n_fft, voice.hop_length, voice.f_max, voice.mel) == (
        16000,
        1024,
        128,
        8000.0,
        True,
    )
