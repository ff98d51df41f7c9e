"""AudioBlock, CrossValidationSplitter and get_dls on a synthetic ESC-50-shaped folder."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tone
from fastai.torch_core import TensorCategory

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.data import AudioBlock, CrossValidationSplitter, audio_item_tfms, get_dls
from specnorm.spectrogram import AudioToSpec

matplotlib.use("Agg")


def test_splitter_uses_the_fold_column():
    df = pd.DataFrame({"fold": [1, 2, 3, 1, 2]})
    assert CrossValidationSplitter(fold=1)(df) == ([1, 2, 4], [0, 3])
    with pytest.raises(ValueError, match="fold 7 has no rows in column 'fold'"):
        CrossValidationSplitter(fold=7)(df)
    with pytest.raises(ValueError, match="no column 'split'"):
        CrossValidationSplitter(col="split")(df)


def test_audio_block_item_transforms():
    assert [type(t).__name__ for t in audio_item_tfms(crop_signal_to=1000)] == [
        "Resample",
        "DownmixMono",
        "ResizeSignal",
    ]
    block = AudioBlock(sample_rate=22050, crop_signal_to=1000)
    assert [type(t).__name__ for t in block.item_tfms[1:]] == ["Resample", "DownmixMono", "ResizeSignal"]
    assert block.item_tfms[1].sr == 22050 and block.item_tfms[3].duration == 1000
    assert len(AudioBlock(sample_rate=None, force_mono=False).item_tfms) == 1  # fastai's ToTensor only


def test_get_dls_yields_typed_spectrogram_batches(esc50_like):
    df, path = esc50_like
    dls = get_dls(
        df,
        path,
        bs=4,
        num_workers=0,
        crop_signal_to=1000,
        batch_tfms=[AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())],
    )
    x, y = dls.one_batch()
    assert isinstance(x, AudioSpectrogram) and isinstance(y, TensorCategory)
    assert x.shape == (4, 1, 201, 81) and x.sr == 16000 and x.dtype == torch.float32
    assert len(dls.train_ds) == 12 and len(dls.valid_ds) == 4 and dls.c == 4
    valid_files = set(df.filename[df.fold == 1])
    assert set(dls.valid_ds.items.filename) == valid_files


def test_get_dls_resamples_and_keeps_the_rate(esc50_like):
    df, path = esc50_like
    dls = get_dls(df, path, bs=2, num_workers=0, crop_signal_to=500, fold=2)
    x, _ = dls.valid.one_batch()
    assert isinstance(x, AudioTensor) and x.shape == (2, 1, 8000) and x.sr == 16000
    # the first validation clip, read and resampled independently, cropped from its start
    first = dls.valid_ds.items.filename.iloc[0]
    k = int(first.split("-")[1])
    spectrum = np.abs(np.fft.rfft(x[0, 0].cpu().numpy()))
    assert np.fft.rfftfreq(8000, 1 / 16000)[spectrum.argmax()] == pytest.approx(300 * (k + 1), abs=2)


def test_show_batch_renders_png(esc50_like, tmp_path):
    df, path = esc50_like
    for batch_tfms in ([], [AudioToSpec.from_cfg(AudioConfig.BasicMelSpectrogram())]):
        dls = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=1000, batch_tfms=batch_tfms)
        dls.show_batch(max_n=4)
        fig = plt.gcf()
        assert len([ax for ax in fig.axes if ax.get_title().startswith("class")]) == 4
        fig.savefig(tmp_path / "batch.png")
        assert (tmp_path / "batch.png").stat().st_size > 10_000
        plt.close("all")


def test_get_dls_errors_name_what_is_wrong(esc50_like, tmp_path):
    df, path = esc50_like
    with pytest.raises(ValueError, match="no column 'label'"):
        get_dls(df, path, label_col="label")
    with pytest.raises(ValueError, match="fold 9 has no rows"):
        get_dls(df, path, fold=9, num_workers=0)
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        get_dls(df, tmp_path / "nowhere")
    bad = pd.concat([df, pd.DataFrame([dict(filename="ghost.wav", fold=1, target=0, category="class0")])])
    with pytest.raises(FileNotFoundError, match="1 files listed in column 'filename' are not in .*: ghost.wav"):
        get_dls(bad, path)


def test_corrupt_file_in_dataset_is_named(esc50_like):
    df, path = esc50_like
    (path / df.filename[0]).write_bytes(b"not audio at all")
    dls = get_dls(df, path, bs=16, num_workers=0, crop_signal_to=500)
    with pytest.raises(ValueError, match=f"cannot decode audio file .*{df.filename[0]}"):
        dls.valid_ds[list(dls.valid_ds.items.filename).index(df.filename[0])]


def test_stereo_and_other_rates_are_unified(tmp_path):
    (tmp_path / "audio").mkdir()
    from conftest import write_audio

    write_audio(tmp_path / "audio" / "a.wav", np.concatenate([tone(500, 22050, 0.5)] * 2), 22050)
    write_audio(tmp_path / "audio" / "b.wav", tone(500, 48000, 0.5), 48000)
    df = pd.DataFrame(dict(filename=["a.wav", "b.wav"] * 2, fold=[1, 1, 2, 2], category=["x", "y"] * 2))
    x, _ = get_dls(df, tmp_path / "audio", bs=2, num_workers=0, crop_signal_to=500, shuffle=False).train.one_batch()
    assert x.shape == (2, 1, 8000) and x.sr == 16000
