"""AudioBlock, CrossValidationSplitter and get_dls on a synthetic ESC-50-shaped folder."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import no_host_reads, tone, write_audio
from fastai.torch_core import TensorCategory, set_seed
from fasttransform import Pipeline, Transform

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.data import AudioBlock, CrossValidationSplitter, audio_item_tfms, get_dls
from specnorm.loader import _to_device
from specnorm.spectrogram import AudioToSpec
from specnorm.store import FLOAT16_ATOL, FLOAT16_RTOL

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


@pytest.mark.parametrize("label_col", ["category", "target"])
def test_vocab_is_the_one_fastai_makes_from_the_training_labels(esc50_like, label_col):
    # get_dls passes the vocabulary to CategoryBlock (made from the column); fastai makes it row by row
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import ColReader

    df, path = esc50_like
    df = df.assign(fold=[1 if i % 4 == 0 else 2 for i in range(len(df))])  # every class in both splits
    expected = (
        DataBlock(
            blocks=(CategoryBlock, CategoryBlock),
            get_x=ColReader("filename"),
            get_y=ColReader(label_col),
            splitter=CrossValidationSplitter("fold", 1),
        )
        .datasets(df)
        .vocab[1]
    )
    for fast in (True, False):
        dls = get_dls(df, path, label_col=label_col, bs=4, num_workers=0, crop_signal_to=200, fast=fast)
        assert list(dls.vocab) == list(expected) and [type(v) for v in dls.vocab] == [type(v) for v in expected]
        ys = torch.cat([y for _, y in dls.valid])
        assert ys.tolist() == [list(expected).index(v) for v in df[label_col][df.fold == 1]]


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
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        get_dls(df, path, pad_mode="reflect")
    bad = pd.concat([df, pd.DataFrame([dict(filename="ghost.wav", fold=1, target=0, category="class0")])])
    with pytest.raises(FileNotFoundError, match="1 files listed in column 'filename' are not in .*: ghost.wav"):
        get_dls(bad, path)


def test_corrupt_file_in_dataset_is_named(esc50_like):
    df, path = esc50_like
    (path / df.filename[0]).write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match=f"cannot decode audio file .*{df.filename[0]}"):
        get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500)  # the store decodes every file
    # sample_rate='auto' reads every header first, and names the file there
    with pytest.raises(ValueError, match=f"cannot decode audio file .*{df.filename[0]}"):
        get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, fast=False)
    dls = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, sample_rate=16000, fast=False)
    with pytest.raises(ValueError, match=f"cannot decode audio file .*{df.filename[0]}"):
        dls.valid_ds[list(dls.valid_ds.items.filename).index(df.filename[0])]


def test_stereo_and_other_rates_are_unified(tmp_path):
    (tmp_path / "audio").mkdir()
    write_audio(tmp_path / "audio" / "a.wav", np.concatenate([tone(500, 22050, 0.5)] * 2), 22050)
    write_audio(tmp_path / "audio" / "b.wav", tone(500, 48000, 0.5), 48000)
    df = pd.DataFrame(dict(filename=["a.wav", "b.wav"] * 2, fold=[1, 1, 2, 2], category=["x", "y"] * 2))
    for fast in (True, False):
        dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0, crop_signal_to=500, shuffle=False, fast=fast)
        x, _ = dls.train.one_batch()
        assert x.shape == (2, 1, 8000) and x.sr == 16000
    # sample_rate=None keeps each file's rate: a batch of mixed rates would carry a wrong `sr`, so it raises
    with pytest.raises(ValueError, match=r"22050 Hz.*48000 Hz.*pass sample_rate="):
        get_dls(df, tmp_path / "audio", bs=2, num_workers=0, crop_signal_to=500, sample_rate=None)
    dls = get_dls(df, tmp_path / "audio", bs=2, num_workers=0, crop_signal_to=500, sample_rate=None, fast=False)
    with pytest.raises(ValueError, match=r"mixes sample rates \[22050, 48000\]"):
        dls.valid.one_batch()


def batches(dl, n=None):
    "The waveforms of the first `n` batches of `dl` (one epoch), as plain float32 tensors."
    out = []
    for i, (x, _) in enumerate(dl):
        if n is not None and i == n:
            break
        out.append(x.as_subclass(torch.Tensor).float())
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("crop", [500, 1500])  # crops the 1 s clips, or pads them
def test_fast_path_batches_equal_the_per_item_path(esc50_like, dtype, crop):
    df, path = esc50_like
    kwargs = dict(bs=4, num_workers=0, crop_signal_to=crop, shuffle=False, drop_last=False)
    fast = get_dls(df, path, store_dtype=dtype, **kwargs)
    slow = get_dls(df, path, fast=False, **kwargs)
    assert type(fast.train).__name__ == "WaveformDL" and type(slow.train).__name__ == "AudioDL"
    rtol, atol = (0, 1e-6) if dtype == "float32" else (FLOAT16_RTOL, FLOAT16_ATOL + 1e-6)
    for (xf, yf), (xs, ys) in zip(fast.valid, slow.valid, strict=True):
        assert xf.dtype == torch.float32 and xf.sr == xs.sr == 16000 and xf.shape == xs.shape
        torch.testing.assert_close(xf.as_subclass(torch.Tensor), xs.as_subclass(torch.Tensor), rtol=rtol, atol=atol)
        assert (yf == ys).all()
        assert xf.lengths.tolist() == xs.lengths.tolist() == [min(crop, 1000) * 16] * len(xf)
    # training crops are random in both; each fast-path crop is a window of the clip the per-item path reads
    x, _ = fast.train.one_batch()
    if crop < 1000:
        for item, fn in zip(x, fast.train_ds.items.filename[:4]):
            full = Pipeline(audio_item_tfms(16000))(AudioTensor.create(path / fn))[0].numpy()
            got = item[0].cpu().numpy()  # batches are on the loaders' device
            start = np.abs(np.lib.stride_tricks.sliding_window_view(full, 8000) - got).max(1).argmin()
            np.testing.assert_allclose(got, full[start : start + 8000], rtol=rtol, atol=atol)


def test_random_crops_differ_between_items_and_epochs_on_train_and_are_fixed_on_valid(esc50_like):
    df, path = esc50_like
    for crop in (250, 1500):  # a crop of the 1 s clips, and a padding of them
        dls = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=crop, shuffle=False)
        first, second = batches(dls.train), batches(dls.train)
        assert not all(torch.equal(a, b) for a, b in zip(first, second))
        starts = {int(torch.nonzero(row[0].abs() > 0)[0]) if crop > 1000 else float(row[0, 0]) for row in first[0]}
        assert len(starts) > 1
        valid = batches(dls.valid), batches(dls.valid)
        assert all(torch.equal(a, b) for a, b in zip(*valid))


def test_workers_give_the_same_batches_as_the_main_process(esc50_like):
    df, path = esc50_like
    runs = []
    for workers in (0, 2):
        set_seed(3)
        dls = get_dls(df, path, bs=4, num_workers=workers, crop_signal_to=300)
        runs.append([batches(dls.train), batches(dls.train), batches(dls.valid)])
    for a, b in zip(*runs):
        assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def test_short_clips_report_their_valid_length(tmp_path):
    (tmp_path / "audio").mkdir()
    for i, seconds in enumerate([0.1, 0.2, 0.3, 0.6]):
        write_audio(tmp_path / "audio" / f"{i}.wav", tone(500, 8000, seconds), 8000)
    df = pd.DataFrame(
        dict(filename=[f"{i}.wav" for i in range(4)] * 2, fold=[1] * 4 + [2] * 4, category=list("abcd") * 2)
    )
    for fast in (True, False):
        dls = get_dls(df, tmp_path / "audio", bs=4, num_workers=0, crop_signal_to=500, sample_rate=8000, fast=fast)
        x, _ = dls.valid.one_batch()
        assert x.lengths.dtype == torch.int64 and sorted(x.lengths.tolist()) == [800, 1600, 2400, 4000]
        assert x.shape == (4, 1, 4000)
    # without a crop, the fast path pads a batch at the end to its longest clip
    x, _ = get_dls(
        df, tmp_path / "audio", bs=4, num_workers=0, sample_rate=8000, crop_signal_to=None, shuffle=False
    ).valid.one_batch()
    assert x.shape == (4, 1, 4800) and x.lengths.tolist() == [800, 1600, 2400, 4800]
    assert (x[0, 0, 800:] == 0).all() and (x[0, 0, :800] != 0).any()


def test_batch_larger_than_the_training_set_is_clamped_with_a_warning(esc50_like):
    df, path = esc50_like
    with pytest.warns(UserWarning, match="bs=64 is larger than the 12 training clips"):
        dls = get_dls(df, path, bs=64, num_workers=0, crop_signal_to=200)
    assert len(dls.train) == 1 and dls.train.bs == 12 and dls.valid.bs == 64
    x, _ = dls.train.one_batch()
    assert x.shape[0] == 12


class Double(Transform):
    "A test item transform: the waveform times two."

    def encodes(self, x: AudioTensor):
        return x * 2


def test_item_transforms_run_on_the_fast_path_and_test_dl_falls_back(esc50_like):
    df, path = esc50_like
    kwargs = dict(bs=4, num_workers=0, crop_signal_to=500, item_tfms=[Double()], store_dtype="float32")
    fast, slow = get_dls(df, path, **kwargs), get_dls(df, path, fast=False, **kwargs)
    xf, xs = fast.valid.one_batch()[0], slow.valid.one_batch()[0]
    torch.testing.assert_close(xf.as_subclass(torch.Tensor), xs.as_subclass(torch.Tensor), rtol=0, atol=2e-6)
    assert xf.lengths.tolist() == [8000] * 4
    stored = fast.test_dl(df.iloc[:3])
    (path / "new.wav").write_bytes((path / df.filename[0]).read_bytes())
    unseen = fast.test_dl(pd.DataFrame(dict(filename=["new.wav"] * 3, fold=1, category="class0")))
    assert type(stored).__name__ == "WaveformDL" and type(unseen).__name__ == "AudioDL"
    for dl in (stored, unseen):
        x = dl.one_batch()[0]
        assert x.shape == (3, 1, 8000) and x.sr == 16000 and x.lengths.tolist() == [8000] * 3
        first = x.as_subclass(torch.Tensor)[:1] / 2  # the test DataLoaders keep the item transforms
        expected = Pipeline(audio_item_tfms(16000, crop_signal_to=500))(AudioTensor.create(path / df.filename[0]))
        torch.testing.assert_close(first[0].cpu(), expected.as_subclass(torch.Tensor), rtol=0, atol=2e-6)


def test_store_in_cache_folder_is_reused(esc50_like, tmp_path):
    df, path = esc50_like
    folder = tmp_path / "store"
    a = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, cache_folder=folder)
    b = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, cache_folder=folder)
    assert a.train.store.path == b.train.store.path and len(list(folder.glob("*.samples"))) == 1
    assert all(torch.equal(u, v) for u, v in zip(batches(a.valid), batches(b.valid)))


def test_fast_path_batches_read_no_tensor_values_on_the_host(esc50_like, device):
    "Making a batch, copying it to the device and the batch transforms never wait for the device."
    df, path = esc50_like
    tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())]
    dl = get_dls(df, path, bs=4, num_workers=0, crop_signal_to=500, batch_tfms=tfms, device=device).train
    dl.before_iter()
    with no_host_reads():
        b = dl.do_batch([dl.do_item(i) for i in (3, 1, 2, 0)])
        x, _ = dl.after_batch(tuple(_to_device(o, device) for o in b))
    assert isinstance(x, AudioSpectrogram) and x.device.type == device.type and x.shape == (4, 1, 201, 41)
    assert b[0].lengths.device == b[0].device  # made with the batch (on a GPU, from the store's device copy)
    assert _to_device(b[0], device).lengths.device.type == device.type


class ThreadCount(Transform):
    "A test item transform: the waveform replaced by the number of torch threads of the process running it."

    order = 100  # after the resampling and the crop of the per-item path

    def encodes(self, x: AudioTensor):
        return x * 0 + torch.get_num_threads()


@pytest.mark.parametrize("fast", [True, False])
def test_worker_processes_run_torch_on_one_thread(esc50_like, fast):
    "No thread oversubscription: each worker runs its item work on one thread."
    df, path = esc50_like
    dls = get_dls(df, path, bs=4, num_workers=2, crop_signal_to=100, item_tfms=[ThreadCount()], fast=fast)
    for x, _ in dls.valid:
        assert (x == 1).all()


@pytest.mark.parametrize("pad_mode", ["zeros_after", "repeat"])
def test_pad_modes_agree_between_the_paths(esc50_like, pad_mode):
    df, path = esc50_like
    kwargs = dict(bs=4, num_workers=0, crop_signal_to=1700, pad_mode=pad_mode, shuffle=False)
    xf, _ = get_dls(df, path, **kwargs).valid.one_batch()
    xs, _ = get_dls(df, path, fast=False, **kwargs).valid.one_batch()
    torch.testing.assert_close(xf.as_subclass(torch.Tensor), xs.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    valid = 27200 if pad_mode == "repeat" else 16000
    assert xf.lengths.tolist() == xs.lengths.tolist() == [valid] * 4
    assert (xf[:, :, 16000:] == 0).all() == (pad_mode == "zeros_after")


def test_batches_gathered_on_the_device_equal_host_gathers(esc50_like, device):
    df, path = esc50_like
    kwargs = dict(bs=4, num_workers=0, crop_signal_to=1300, device=device)
    runs = []
    for on_device in (False, True):
        set_seed(5)
        dls = get_dls(df, path, store_on_device=on_device, **kwargs)
        runs.append(batches(dls.train) + batches(dls.valid))
        x, _ = dls.valid.one_batch()
        assert x.device.type == device.type and x.lengths.device.type == device.type
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    dl = dls.train
    dl.before_iter()
    with no_host_reads():
        x, _ = dl.do_batch([dl.do_item(i) for i in (3, 1, 2, 0)])
    assert x.device.type == device.type and x.lengths.tolist() == [16000] * 4
