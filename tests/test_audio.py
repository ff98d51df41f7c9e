"""AudioTensor and AudioSpectrogram: file I/O, metadata, plots, and bad files."""

import matplotlib
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tone, write_audio

from specnorm.audio import AudioSpectrogram, AudioTensor

matplotlib.use("Agg")


@pytest.mark.parametrize(
    "ext,subtype,atol",
    [("wav", "FLOAT", 0), ("wav", "PCM_16", 1 / 32768), ("flac", "PCM_16", 1 / 32768), ("ogg", "VORBIS", 0.05)],
)
def test_create_reads_formats_as_float32_channels_first(tmp_path, ext, subtype, atol):
    data = np.concatenate([tone(440, 22050, 0.5), tone(880, 22050, 0.5, amplitude=0.25)])
    fn = tmp_path / f"clip.{ext}"
    sf.write(fn, data.T, 22050, subtype=subtype)
    audio = AudioTensor.create(fn)
    assert isinstance(audio, AudioTensor) and audio.dtype == torch.float32
    assert audio.shape == (2, 11025) and audio.sr == 22050
    assert (audio.nchannels, audio.nsamples, audio.duration) == (2, 11025, 0.5)
    np.testing.assert_allclose(audio.numpy(), data, atol=atol + 1e-7)


def test_wrap_tensor_and_save_roundtrip(tmp_path):
    audio = AudioTensor(torch.from_numpy(tone(1000, 8000, 0.25)[0]), sr=8000)
    assert audio.shape == (1, 2000) and audio.sr == 8000
    audio.save(tmp_path / "out.wav")
    back = AudioTensor.create(tmp_path / "out.wav")
    assert back.sr == 8000
    np.testing.assert_allclose(back.numpy(), audio.numpy(), atol=1 / 32768)


def test_metadata_survives_torch_ops_and_stacking():
    a = AudioTensor(torch.randn(1, 100), sr=22050)
    assert (a * 2)[..., :10].sr == 22050
    batch = torch.stack([a, a])
    assert isinstance(batch, AudioTensor) and batch.sr == 22050 and batch.nchannels == 1


def test_show_plots_time_in_seconds():
    ax = AudioTensor(torch.from_numpy(tone(100, 1000, 2.0)), sr=1000).show(title="x")
    line = ax.get_lines()[0].get_xdata()
    assert line[-1] == pytest.approx(1.999) and ax.get_xlabel() == "time (s)" and ax.get_title() == "x"


def test_spectrogram_properties_and_show_axes():
    spec = AudioSpectrogram(torch.randn(1, 201, 401), sr=16000, n_fft=400, hop_length=200, mel=False, to_db=True)
    assert (spec.nchannels, spec.height, spec.width, spec.duration) == (1, 201, 401, 5.0)
    assert spec.frequencies()[-1] == 8000
    ax = spec.show()
    assert ax.get_xlim() == (0, 5.0)
    assert ax.figure.axes[-1].get_ylabel() == "dB"  # the colorbar
    assert ax.get_yticklabels()[-1].get_text() == "8000"


def test_mel_rows_are_labelled_with_mel_frequencies():
    spec = AudioSpectrogram(
        torch.randn(1, 64, 10), sr=16000, hop_length=160, mel=True, to_db=False, n_mels=64, f_min=0.0, f_max=None
    )
    freqs = spec.frequencies()
    diffs = np.diff(freqs)
    assert 0 < freqs[0] < freqs[-1] < 8000 and (diffs[1:] > diffs[:-1]).all()  # mel: wider bands up high
    assert spec.show().figure.axes[-1].get_ylabel() == "value"


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        AudioTensor.create(tmp_path / "nope.wav")


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage" * 10, b"just text, not audio"])
def test_empty_or_corrupt_file_names_it(tmp_path, content):
    fn = tmp_path / "broken.wav"
    fn.write_bytes(content)
    with pytest.raises(ValueError, match="broken.wav"):
        AudioTensor.create(fn)


def test_zero_length_file_is_an_error(tmp_path):
    fn = write_audio(tmp_path / "empty.wav", np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav has no samples"):
        AudioTensor.create(fn)


def test_nan_samples_are_an_error(tmp_path):
    data = tone(440, 8000, 0.1)
    data[0, 5] = np.nan
    fn = tmp_path / "nan.wav"
    sf.write(fn, data.T, 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav contains 1 NaN"):
        AudioTensor.create(fn)


def test_standardized_spectrograms_are_not_labelled_db():
    from specnorm.normalize import SpecNormalize

    spec = AudioSpectrogram(torch.randn(1, 1, 8, 20) * 10 - 50, sr=16000, hop_length=160, to_db=True, mel=False)
    norm = SpecNormalize(-50.0, 10.0)
    assert norm(spec)[0].show().figure.axes[-1].get_ylabel() == "standardized"
    assert norm.decode(norm(spec))[0].show().figure.axes[-1].get_ylabel() == "dB"


def _tensors():
    audio = AudioTensor(torch.randn(2, 300), sr=22050)
    spec = AudioSpectrogram(
        torch.randn(1, 20, 30),
        sr=16000,
        n_fft=400,
        hop_length=200,
        mel=True,
        n_mels=20,
        f_min=0.0,
        f_max=None,
        to_db=True,
    )
    return audio, spec


def _same_meta(a, b):
    assert type(a) is type(b) and a.__dict__ == b.__dict__ and torch.equal(a.cpu(), b.cpu())


def test_metadata_survives_clone_to_pickle_and_torch_load(tmp_path):
    import pickle

    for x in _tensors():
        _same_meta(x.clone(), x)
        _same_meta(x.to(torch.float64).float(), x)
        _same_meta(pickle.loads(pickle.dumps(x)), x)
        torch.save(x, tmp_path / "x.pt")
        _same_meta(torch.load(tmp_path / "x.pt"), x)  # torch's default weights_only=True
        clone = x.clone()
        clone.sr = 1  # a copy of the metadata, not a shared dict
        assert x.sr != 1


class _Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return AudioTensor(torch.full((1, 100), float(i)), sr=8000 + i)


def test_metadata_survives_a_dataloader_with_workers():
    from fastai.data.load import DataLoader

    items = list(DataLoader(_Clips(), bs=1, num_workers=2))
    assert sorted(int(b.sr) for (b,) in items) == [8000, 8001, 8002, 8003]
    assert all(isinstance(b, AudioTensor) for (b,) in items)


def test_spectrogram_settings_and_fastaudio_create():
    _, spec = _tensors()
    assert spec.settings == dict(
        sr=16000, n_fft=400, hop_length=200, mel=True, n_mels=20, f_min=0.0, f_max=None, to_db=True
    )
    made = AudioSpectrogram.create(torch.zeros(1, 4, 5), settings={"sr": 8000, "hop_length": 80})
    assert made.sr == 8000 and made.hop_length == 80 and made.settings == {"sr": 8000, "hop_length": 80}


def test_show_can_play_and_functions_draw(monkeypatch):
    from specnorm.audio import show_audio_signal, show_spectrogram

    audio, spec = _tensors()
    heard = []
    monkeypatch.setattr(AudioTensor, "hear", lambda self: heard.append(self.sr))
    audio.show(hear=True)
    audio.show()
    assert heard == [22050]
    ax = show_audio_signal(audio, title="clip")
    assert ax.get_title() == "clip" and len(ax.lines) == 2
    ax = show_spectrogram(spec, title="spec")
    assert ax.get_title() == "spec" and ax.get_ylabel().startswith("mel")
