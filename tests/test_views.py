"""fastai's result views for audio: `learn.show_results()` and `plot_top_losses`, one grid figure each."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_esc50_like, tone
from fastai.interpret import Interpretation
from fastai.learner import Learner
from fastai.torch_core import TensorBase

import specnorm.views as views
from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.normalize import SpecNormalize
from specnorm.spectrogram import AudioToSpec
from specnorm.views import spec_to_audio

matplotlib.use("Agg")


class Lens(nn.Module):
    "A tiny classifier for `[B, 1, F, T]` spectrograms or `[B, 1, T]` waveforms: pooled rows, then linear."

    def __init__(self, n_out, spectrogram):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((8, 1)) if spectrogram else nn.AdaptiveAvgPool1d(8)
        self.fc = nn.Linear(8, n_out)

    def forward(self, x):
        return self.fc(self.pool(x.abs() if x.ndim == 3 else x).flatten(1))


@pytest.fixture(params=["spectrogram", "waveform"])
def learn(request, tmp_path):
    torch.manual_seed(0)
    df = make_esc50_like(tmp_path, sr=8000, seconds=0.5)
    spectrogram = request.param == "spectrogram"
    batch_tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram()), SpecNormalize()] if spectrogram else []
    dls = get_dls(
        df, tmp_path / "audio", bs=4, num_workers=0, sample_rate=8000, crop_signal_to=500, batch_tfms=batch_tfms
    )
    yield Learner(dls, Lens(dls.c, spectrogram))
    plt.close("all")


def _panels(fig):
    "The axes that show an item (a spectrogram image or a waveform line), not colorbars nor unused grid cells."
    return [ax for ax in fig.axes if ax.axison and (ax.images or ax.lines)]


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_show_results_draws_one_grid_with_target_and_prediction(learn):
    plt.close("all")
    learn.show_results(max_n=4)
    assert len(plt.get_fignums()) == 1
    fig = plt.gcf()
    panels = _panels(fig)
    assert len(panels) == 4
    spectrogram = isinstance(learn.dls.one_batch()[0], AudioSpectrogram)
    # a 2 x 2 grid, plus one colorbar per spectrogram panel
    assert len(fig.axes) == 4 + (4 if spectrogram else 0) and len(_colorbars(fig)) == (4 if spectrogram else 0)
    # the batch is decoded before it is drawn: SpecNormalize undone, values in dB again
    assert all(cb.get_ylabel() == "dB" for cb in _colorbars(fig))
    vocab = set(learn.dls.vocab)
    for ax in panels:
        target, pred = ax.get_title().split(" / ")
        assert target in vocab and pred in vocab
        assert ax.title.get_color() == ("green" if target == pred else "red")


def test_show_results_titles_match_the_model_predictions(learn):
    # A model whose prediction is known independently: always class 2.
    class Always2(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.new_tensor([0.0, 0.0, 9.0, 0.0]).expand(len(x), 4) + self.w

    learn.model = Always2()
    plt.close("all")
    b = learn.dls.valid.one_batch()
    targets = [learn.dls.vocab[int(t)] for t in b[1]]
    _, _, preds = learn.get_preds(dl=[b], with_decoded=True)
    learn.dls.valid.show_results(b, preds, max_n=4)
    titles = [ax.get_title() for ax in _panels(plt.gcf())]
    assert titles == [f"{t} / class2" for t in targets]


@pytest.mark.parametrize("k", [3, 4])  # the validation fold holds 4 clips
def test_plot_top_losses_draws_k_panels_sorted_by_loss(learn, k):
    plt.close("all")
    interp = Interpretation.from_learner(learn)
    interp.plot_top_losses(k)
    assert len(plt.get_fignums()) == 1
    fig = plt.gcf()
    panels = _panels(fig)
    assert len(panels) == k
    assert "loss" in fig._suptitle.get_text()
    expected_losses, _ = interp.top_losses(k)
    vocab = set(learn.dls.vocab)
    shown = []
    for ax in panels:
        names, scores = ax.get_title().split("\n")
        pred, target = names.split(" / ")
        loss, prob = map(float, scores.split(" / "))
        assert pred in vocab and target in vocab and 0 < prob <= 1
        shown.append(loss)
    np.testing.assert_allclose(shown, expected_losses.numpy(), atol=0.006)  # titles round to 2 decimals


def test_hear_is_a_no_op_outside_a_notebook(learn, monkeypatch):
    pytest.importorskip("IPython")  # a notebook's display; absent on some machines (the GPU image)
    monkeypatch.setattr(views, "in_notebook", lambda: False)
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    learn.show_results(max_n=2, hear=True)
    assert shown == [] and len(plt.get_fignums()) == 1


def test_hear_in_a_notebook_shows_one_player_per_panel(learn, monkeypatch):
    Audio = pytest.importorskip("IPython.display").Audio

    monkeypatch.setattr(views, "in_notebook", lambda: True)
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    Interpretation.from_learner(learn).plot_top_losses(3, hear=True)
    players = [o for o in shown if isinstance(o, Audio)]
    assert len(players) == 3
    assert all(p.data[:4] == b"RIFF" and p.data[8:12] == b"WAVE" for p in players)
    assert {int.from_bytes(p.data[24:28], "little") for p in players} == {8000}  # the WAV header's sample rate


def test_show_results_on_numeric_targets_prints_numbers_without_colour():
    plt.close("all")
    x = AudioTensor(torch.from_numpy(tone(440, 8000, 0.25, channels=3)), sr=8000)[:, None]  # a batch of 3 clips
    samples = [(x[i], 0.5 * i) for i in range(3)]
    outs = [(torch.tensor(0.5 * i + 0.01234),) for i in range(3)]
    ctxs = views.show_results(x, TensorBase(torch.arange(3.0)), samples, outs)
    assert len(ctxs) == 3 and len(plt.get_fignums()) == 1
    assert [ax.get_title() for ax in ctxs] == ["0 / 0.0123", "0.5 / 0.512", "1 / 1.01"]
    default = matplotlib.rcParams["axes.titlecolor"]
    assert all(ax.title.get_color() in (default, "black") for ax in ctxs)
    plt.close("all")


@pytest.mark.parametrize("mel", [False, True])
def test_spec_to_audio_keeps_a_tone_frequency(mel, device):
    sr, f = 8000, 1000.0
    audio = AudioTensor(torch.from_numpy(tone(f, sr, 0.5)), sr=sr).to(device)
    settings = dict(n_fft=512, hop_length=128) | (dict(n_mels=64, sample_rate=sr) if mel else {})
    spec = AudioToSpec(mel=mel, **settings)(audio)
    y = spec_to_audio(spec)
    assert isinstance(y, AudioTensor) and y.sr == sr and y.shape == (1, 3968)  # (frames - 1) * hop
    assert y.device == audio.device
    spectrum = np.abs(np.fft.rfft(y[0].cpu().numpy()))
    peak = np.fft.rfftfreq(y.shape[-1], 1 / sr)[spectrum.argmax()]
    assert peak == pytest.approx(f, abs=40 if mel else 5)  # mel rows near 1 kHz are ~40 Hz apart


def test_spec_to_audio_refuses_what_it_cannot_invert():
    from specnorm.spectrogram import AudioToMFCC

    audio = AudioTensor(torch.from_numpy(tone(440, 16000, 0.2)), sr=16000)
    with pytest.raises(ValueError, match="MFCC"):
        spec_to_audio(AudioToMFCC(n_mfcc=13, melkwargs=dict(n_mels=40))(audio))
    spec = AudioToSpec()(audio)
    spec.standardized = True
    with pytest.raises(ValueError, match="decode"):
        spec_to_audio(spec)
