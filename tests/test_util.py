"""specnorm.util: fastaudio's test helpers."""

import numpy as np
import torch

from specnorm.all import AudioTensor, ChangeVolume, ResizeSignal
from specnorm.util import apply_transform, auto_batch, create_sin_wave
from specnorm.util import test_audio_tensor as make_test_audio


def test_create_sin_wave_has_its_frequency_and_length():
    wave, sr = create_sin_wave(seconds=2, sr=8000, freq=440)
    assert sr == 8000 and wave.shape == (16000,) and wave.dtype == torch.float32
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert np.fft.rfftfreq(16000, 1 / 8000)[spectrum.argmax()] == 440
    assert abs(wave.abs().max().item() - 1) < 1e-3


def test_test_audio_tensor_shape_and_metadata():
    a = make_test_audio(seconds=3, sr=8000, channels=2)
    assert isinstance(a, AudioTensor) and a.shape == (2, 24000) and a.sr == 8000 and a.duration == 3
    assert torch.equal(a[0], a[1])
    assert make_test_audio.__test__ is False  # pytest does not collect it where it is imported


def test_apply_transform_leaves_the_input_alone_and_uses_the_training_split():
    audio = make_test_audio()
    before = audio.clone()
    inp, out = apply_transform(ChangeVolume(p=1.0, lower=3.0, upper=3.0), audio)
    assert torch.equal(audio, before) and torch.equal(inp, before)
    assert torch.allclose(out, 3 * before)  # a RandTransform: applied as on the training split
    inp, out = apply_transform(ResizeSignal(1000), audio)
    assert out.shape == (1, 16000)


def test_auto_batch_adds_and_removes_the_batch_axis():
    seen = []

    class Norm:
        @auto_batch(2)
        def __call__(self, x):
            seen.append(x.ndim)
            return x / x.abs().amax((-2, -1), keepdim=True)

    item = torch.tensor([[1.0, -4.0]])
    assert torch.equal(Norm()(item), torch.tensor([[0.25, -1.0]]))
    assert Norm()(torch.ones(5, 1, 2)).shape == (5, 1, 2)
    assert seen == [3, 3]
