"""Inference on new files: `learn.predict` on a file, `get_preds` on a folder's `test_dl`, `export`/`load_learner`."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_esc50_like, tone, write_audio
from fastai.learner import Learner, load_learner

from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.normalize import SpecNormalize
from specnorm.spectrogram import AudioToSpec

SR = 8000


class ToneClassifier(nn.Module):
    """Class k is a tone at 300 * (k + 1) Hz (as `make_esc50_like` writes them): the logits are minus the distance
    in Hz between each class's tone and the loudest row of the time-averaged linear spectrogram."""

    def __init__(self, n_classes, sr, n_rows):
        super().__init__()
        self.register_buffer("centres", 300.0 * torch.arange(1, n_classes + 1))
        self.register_buffer("row_hz", torch.linspace(0, sr / 2, n_rows))
        self.inv_temperature = nn.Parameter(torch.tensor(1 / 50))  # fastai's Learner needs a parameter

    def forward(self, x):
        peak = self.row_hz[x.mean((1, 3)).argmax(1)]
        return -(peak[:, None] - self.centres).abs() * self.inv_temperature


def _learner(root, *batch_tfms):
    df = make_esc50_like(root, sr=SR, seconds=0.5)
    a2s = AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())
    dls = get_dls(
        df, root / "audio", bs=4, num_workers=0, sample_rate=SR, crop_signal_to=500, batch_tfms=[a2s, *batch_tfms]
    )
    return Learner(dls, ToneClassifier(dls.c, SR, 201))


@pytest.fixture
def learn(tmp_path):
    return _learner(tmp_path / "data")


@pytest.fixture
def new_files(tmp_path):
    "A folder of unseen clips, of other lengths than the training crop: class k at 300 * (k + 1) Hz."
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (k, seconds) in enumerate([(0, 0.3), (3, 0.7), (1, 0.5), (2, 0.4), (3, 0.25)]):
        x = tone(300 * (k + 1), SR, seconds, amplitude=0.2) + 0.01 * rng.standard_normal((1, round(SR * seconds)))
        write_audio(folder / f"{i}-class{k}.wav", x.astype(np.float32), SR)
    return sorted(folder.glob("*.wav"))


def _label(fn):
    return Path(fn).stem.split("-")[1]


@pytest.mark.parametrize("as_path", [str, Path])
def test_predict_on_a_file_names_the_tone(learn, new_files, as_path):
    for fn in new_files:
        label, idx, probs = learn.predict(as_path(fn))
        assert label == _label(fn) and learn.dls.vocab[int(idx)] == label
        assert probs.shape == (learn.dls.c,) and float(probs.sum()) == pytest.approx(1, abs=1e-5)


def test_predict_on_a_path_equals_predict_on_its_str(learn, new_files):
    on_str, on_path = learn.predict(str(new_files[1])), learn.predict(new_files[1])
    assert on_path[0] == on_str[0]
    torch.testing.assert_close(on_path[2], on_str[2])


@pytest.mark.parametrize("as_path", [str, Path])
def test_get_preds_on_a_folder(learn, new_files, as_path):
    dl = learn.dls.test_dl([as_path(f) for f in new_files])
    preds, targs = learn.get_preds(dl=dl)
    assert preds.shape == (len(new_files), learn.dls.c) and targs is None
    assert [learn.dls.vocab[i] for i in preds.argmax(1)] == [_label(f) for f in new_files]
    # the same probabilities as one predict per file (padding on both sides, as on the validation split)
    torch.testing.assert_close(preds, torch.stack([learn.predict(str(f))[2] for f in new_files]))


@pytest.mark.filterwarnings("ignore:load_learner. uses Python's insecure pickle")
def test_export_and_load_learner_predict_the_same(learn, new_files, tmp_path):
    learn.export(tmp_path / "model.pkl")
    loaded = load_learner(tmp_path / "model.pkl", cpu=True)
    for fn in new_files:
        label, _, probs = loaded.predict(str(fn))
        assert label == _label(fn)
        torch.testing.assert_close(probs, learn.predict(str(fn))[2])
    preds, _ = loaded.get_preds(dl=loaded.dls.test_dl([str(f) for f in new_files]))
    assert [loaded.dls.vocab[i] for i in preds.argmax(1)] == [_label(f) for f in new_files]


@pytest.mark.filterwarnings("ignore:load_learner. uses Python's insecure pickle")
def test_exported_pipeline_keeps_its_normalization_statistics(tmp_path, new_files):
    # One global mean/std: standardizing keeps the loudest row, so the tone classifier still applies.
    learn = _learner(tmp_path / "data", SpecNormalize(axes=(0, 1, 2, 3)))
    norm = learn.dls.after_batch[-1]
    learn.export(tmp_path / "model.pkl")
    loaded = load_learner(tmp_path / "model.pkl", cpu=True)
    loaded_norm = loaded.dls.after_batch[-1]
    assert isinstance(loaded_norm, SpecNormalize)
    torch.testing.assert_close(loaded_norm.mean, norm.mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded_norm.std, norm.std, rtol=0, atol=0)
    dl = loaded.dls.test_dl([str(f) for f in new_files])
    x = dl.one_batch()[0]
    assert x.standardized and float(x.mean()) == pytest.approx(0, abs=3)  # standardized, not dB near -60
    preds, _ = loaded.get_preds(dl=dl)
    assert [loaded.dls.vocab[i] for i in preds.argmax(1)] == [_label(f) for f in new_files]
