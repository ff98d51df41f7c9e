"""WaveformStore: contents equal to the per-item transforms, reuse and rebuild on disk, refusal of damaged stores."""

import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import no_host_reads, tone, write_audio
from fasttransform import Pipeline

from specnorm.audio import AudioTensor
from specnorm.signal import audio_item_tfms
from specnorm.store import FLOAT16_ATOL, FLOAT16_RTOL, StoreError, WaveformStore


@pytest.fixture
def files(tmp_path):
    "Clips at three rates, one stereo, of different lengths."
    rng = np.random.default_rng(0)
    specs = [("a.wav", 44100, 1, 0.5), ("b.flac", 22050, 2, 0.3), ("c.wav", 16000, 1, 0.2), ("d.wav", 48000, 1, 0.25)]
    out = []
    for name, sr, channels, seconds in specs:
        x = tone(440, sr, seconds, amplitude=0.4, channels=channels) + 0.05 * rng.standard_normal(
            (channels, round(sr * seconds))
        )
        out.append(str(write_audio(tmp_path / name, x.astype(np.float32), sr)))
    return out


def per_item(fn, sample_rate=16000, force_mono=True):
    "What fastai's per-item pipeline (Resample, DownmixMono) makes of `fn`: the reference."
    return Pipeline(audio_item_tfms(sample_rate, force_mono))(AudioTensor.create(fn))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_holds_what_the_per_item_transforms_compute(files, dtype, tmp_path):
    store = WaveformStore.build(files, tmp_path / "store", sample_rate=16000, dtype=dtype, progress=False)
    assert len(store) == 4 and store.data.dtype == np.dtype(dtype)
    for i, fn in enumerate(files):
        expected = per_item(fn).numpy()
        got = store[i]
        assert got.sr == 16000 and got.shape == expected.shape
        # downmixing before resampling (the store) or after (per item) differs by float32 rounding only
        rtol, atol = (FLOAT16_RTOL, FLOAT16_ATOL + 1e-6) if dtype == "float16" else (0, 1e-6)
        np.testing.assert_allclose(got.numpy(), expected, rtol=rtol, atol=atol)
    assert store.nbytes == sum(per_item(fn).nsamples for fn in files) * np.dtype(dtype).itemsize


def test_store_keeps_rates_and_channels_when_asked(files):
    store = WaveformStore.build(files, sample_rate=None, force_mono=False, progress=False, dtype="float32")
    assert store.rates.tolist() == [44100, 22050, 16000, 48000] and store.channels.tolist() == [1, 2, 1, 1]
    np.testing.assert_array_equal(store[1].numpy(), AudioTensor.create(files[1]).numpy())
    assert store.path is None  # in memory


def test_gather_crops_pads_and_repeats():
    data = np.arange(10, dtype=np.float32)  # clip 0: 0..5 (6 samples); clip 1: 6..9 (4 samples)
    store = WaveformStore(["x", "y"], data, np.array([0, 6]), np.array([1, 1]), np.array([6, 4]), np.array([8, 8]))
    out, lengths = store.gather([0, 1], 5, [1, -1])
    assert out.tolist() == [[[1, 2, 3, 4, 5]], [[0, 6, 7, 8, 9]]] and lengths.tolist() == [5, 4]
    out, lengths = store.gather([1, 0], 7, [0, -1], pad_mode="zeros_after")
    assert out.tolist() == [[[6, 7, 8, 9, 0, 0, 0]], [[0, 0, 1, 2, 3, 4, 5]]] and lengths.tolist() == [4, 6]
    out, lengths = store.gather([1, 0], 9, [0, 0], pad_mode="repeat")
    assert out.tolist() == [[[6, 7, 8, 9, 6, 7, 8, 9, 6]], [[0, 1, 2, 3, 4, 5, 0, 1, 2]]] and lengths.tolist() == [9, 9]
    out, _ = store.gather([0], 3, [2], pad_mode="repeat")  # a long clip is cropped where asked
    assert out.tolist() == [[[2, 3, 4]]]


def test_store_on_disk_is_reused_then_rebuilt_when_a_source_or_a_setting_changes(files, tmp_path):
    folder = tmp_path / "store"
    first = WaveformStore.build(files, folder, progress=False)
    assert first.path.is_file() and isinstance(first.data, np.memmap)
    again = WaveformStore.build(files, folder, progress=False)
    assert again.path == first.path and sorted(p.name for p in folder.iterdir()) == sorted(
        [first.path.name, first.path.with_suffix(".samples").name]
    )
    # rewrite a source: a new store, the stale one removed, the new samples read
    write_audio(files[2], tone(1000, 16000, 0.2, amplitude=0.1), 16000)
    changed = WaveformStore.build(files, folder, progress=False)
    assert changed.path != first.path and not first.path.exists()
    np.testing.assert_allclose(changed[2].numpy(), tone(1000, 16000, 0.2, amplitude=0.1), atol=1e-4)
    # another setting: another store, next to it
    other = WaveformStore.build(files, folder, sample_rate=8000, progress=False)
    assert other.path != changed.path and changed.path.exists() and other[0].shape == (1, 4000)


def test_damaged_store_is_refused_with_an_error_naming_it(files, tmp_path):
    store = WaveformStore.build(files, tmp_path / "store", progress=False)
    samples, head = store.path.with_suffix(".samples"), store.path
    raw = samples.read_bytes()
    samples.write_bytes(raw[:-10])
    with pytest.raises(StoreError, match=f"{samples.name} is truncated"):
        WaveformStore.build(files, tmp_path / "store", progress=False)
    samples.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    with pytest.raises(StoreError, match=f"{samples.name} is corrupt"):
        WaveformStore.open(head)
    head.write_text("{not json")
    with pytest.raises(StoreError, match=f"{head.name} is corrupt"):
        WaveformStore.open(head)


def test_bad_files_are_named(files, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot decode audio file .*bad.wav"):
        WaveformStore.build([*files, str(bad)], progress=False)
    with pytest.raises(FileNotFoundError, match="ghost.wav"):
        WaveformStore.build([*files, str(tmp_path / "ghost.wav")], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        WaveformStore.build(files, dtype="int8")
    loud = tmp_path / "loud.wav"
    sf.write(loud, np.full(1000, 1e5, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="loud.wav has samples beyond float16's range"):
        WaveformStore.build([*files, str(loud)], dtype="float16", progress=False)
    assert WaveformStore.build([str(loud)], progress=False)[0].max() == 1e5  # float32 holds it


def test_memory_mapped_store_pickles_as_its_path(files, tmp_path):
    store = WaveformStore.build(files, tmp_path / "store", progress=False)
    blob = pickle.dumps(store)
    assert len(blob) < store.nbytes  # the samples stay on disk
    back = pickle.loads(blob)
    assert isinstance(back.data, np.memmap)
    torch.testing.assert_close(back[3].as_subclass(torch.Tensor), store[3].as_subclass(torch.Tensor))
    assert os.path.samefile(back.path, store.path)


@pytest.mark.parametrize("pad_mode", ["zeros", "zeros_after", "repeat"])
def test_take_on_a_device_equals_gather(files, pad_mode, device):
    store = WaveformStore.build(files, sample_rate=16000, progress=False)
    samples = torch.from_numpy(store.data).to(device)
    rows, n = [3, 0, 2, 1, 2], 5000  # clips of 4000, 8000, 3200, 4800 samples
    starts = [-300, 1234, 0, -200, -1800]
    expected, lengths = store.gather(rows, n, starts, pad_mode)
    with no_host_reads():
        got, got_lengths = store.take(samples, rows, n, starts, pad_mode)
    assert got.device.type == device.type and got.dtype == torch.float32
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    np.testing.assert_array_equal(got_lengths, lengths)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_samples_at_the_target_rate_are_stored_as_libsndfile_reads_them(subtype, ext, tmp_path):
    # 16-bit files are read as integers and scaled by 2**-15 here: bit for bit libsndfile's float32
    if ext == "flac" and subtype == "FLOAT":
        pytest.skip("FLAC holds integer samples only")
    rng = np.random.default_rng(1)
    x = np.clip(rng.standard_normal((3000, 2)) * 0.4, -1, 1).astype(np.float32)
    x[:4, 0] = [-1.0, 1.0, 0.0, -0.5]  # the extremes of the integer range
    fn = tmp_path / f"x.{ext}"
    sf.write(fn, x, 16000, subtype=subtype)
    store = WaveformStore.build([fn, fn], sample_rate=16000, force_mono=False, progress=False)
    expected = sf.read(fn, dtype="float32", always_2d=True)[0].T
    assert np.array_equal(store[1].numpy(), expected)


@pytest.mark.parametrize("label_col", ["category", "my label"])
def test_loader_targets_equal_fastais_per_row_items(label_col):
    # WaveformDL reads targets from named tuples where column names allow it, from pandas rows otherwise
    import pandas as pd
    from fastai.data.block import CategoryBlock, DataBlock, RegressionBlock
    from fastai.data.transforms import ColReader

    from specnorm.loader import _targets

    df = pd.DataFrame({"filename": [f"{i}.wav" for i in range(9)], label_col: list("abcabcaab"), "y": range(9)})
    block = DataBlock(blocks=(CategoryBlock, RegressionBlock), get_x=ColReader(label_col), get_y=ColReader("y"))
    dsets = block.datasets(df)
    for tl in dsets.train.tls:
        got, expected = _targets(tl), [tl[i] for i in range(len(tl))]
        assert [type(v) for v in got] == [type(v) for v in expected]
        assert torch.equal(torch.stack(got), torch.stack(expected))


@pytest.mark.parametrize("small,keep", [(0, 0), (1 << 16, 30000), (1 << 16, 1 << 26)])
def test_files_read_with_their_header_or_later_give_the_same_store(files, small, keep, monkeypatch):
    # small files are read in the same open as their header while the budget lasts, the others later
    import specnorm.store as st

    reference = WaveformStore.build(files, sample_rate=16000, progress=False, n_workers=1)
    monkeypatch.setattr(st, "SMALL_FILE_SAMPLES", small)
    monkeypatch.setattr(st, "KEEP_SAMPLES", keep)
    store = WaveformStore.build(files, sample_rate=16000, progress=False)
    assert np.array_equal(store.data, reference.data) and np.array_equal(store.offsets, reference.offsets)


def _wav(fn, samples, rate, extensible=False, junk=b""):
    "A 16-bit PCM WAV file written by hand: an optional odd-sized chunk first, WAVE_FORMAT_EXTENSIBLE if asked."
    import struct

    channels = samples.shape[1]
    if extensible:  # 40-byte fmt: cbSize 22, valid bits, channel mask, the PCM subformat GUID
        guid = bytes.fromhex("0100000000001000800000aa00389b71")
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * 2 * channels, 2 * channels, 16, 22, 16, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    data = samples.astype("<i2").tobytes()
    chunks = b""
    if junk:
        chunks += b"junk" + struct.pack("<I", len(junk)) + junk + b"\0" * (len(junk) & 1)
    chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    fn.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return fn


@pytest.mark.parametrize("small", [1 << 16, 0])  # read with the header, or later
@pytest.mark.parametrize("variant", ["plain", "extensible", "odd chunk first"])
def test_16_bit_wav_samples_are_read_as_libsndfile_reads_them(variant, small, tmp_path, monkeypatch):
    # 16-bit PCM WAV files are read without libsndfile, from where their header says the samples are
    import specnorm.store as st
    from specnorm.audio import wav_layout

    monkeypatch.setattr(st, "SMALL_FILE_SAMPLES", small)
    rng = np.random.default_rng(2)
    samples = rng.integers(-(2**15), 2**15, size=(1001, 2), dtype=np.int64)
    samples[:2, 0] = [-(2**15), 2**15 - 1]
    junk = b"abc" if variant == "odd chunk first" else b""
    fn = _wav(tmp_path / "x.wav", samples, 22050, extensible=variant == "extensible", junk=junk)
    with open(fn, "rb") as f:
        layout = wav_layout(f)
    assert layout.pcm16 and (layout.rate, layout.channels, layout.size) == (22050, 2, 1001 * 4)
    store = WaveformStore.build([fn], sample_rate=None, force_mono=False, progress=False)
    expected, rate = sf.read(fn, dtype="float32", always_2d=True)
    assert rate == 22050 and np.array_equal(store[0].numpy(), expected.T)
    np.testing.assert_array_equal(store[0].numpy() * 2**15, samples.T)


@pytest.mark.parametrize("small", [1 << 16, 0])
def test_truncated_16_bit_wav_in_a_store_is_named(small, tmp_path, monkeypatch):
    import specnorm.store as st

    monkeypatch.setattr(st, "SMALL_FILE_SAMPLES", small)
    fn = _wav(tmp_path / "cut.wav", np.zeros((1000, 1), dtype=np.int64), 16000)
    fn.write_bytes(fn.read_bytes()[:-300])  # a cut copy: 850 of 1000 samples
    with pytest.raises(ValueError, match=r"cut.wav is truncated: it holds 850 of the 1000 samples"):
        WaveformStore.build([fn], sample_rate=None, progress=False)


@pytest.mark.parametrize("labels", [list("abcabcaab"), [3, 1, 2, 3, 1, 2, 3, 3, 1]])
def test_label_column_is_mapped_in_one_step_as_fastai_maps_it_per_item(labels, monkeypatch):
    # ColReader + Categorize (get_dls's labels): the column through the vocabulary, equal to fastai per item
    import pandas as pd
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.load import fa_collate
    from fastai.data.transforms import ColReader

    import specnorm.loader as ld

    df = pd.DataFrame({"filename": [f"{i}.wav" for i in range(9)], "label": labels})
    block = DataBlock(blocks=(CategoryBlock, CategoryBlock), get_x=ColReader("filename"), get_y=ColReader("label"))
    tl = block.datasets(df).train.tls[1]
    expected = fa_collate([tl[i] for i in range(len(tl))])
    monkeypatch.setattr(ld, "_targets", None)  # the one-step path must not fall back to the per-item one
    got = ld._collated_targets(tl)
    assert type(got) is type(expected) and got.dtype == expected.dtype and torch.equal(got, expected)
    tl.items = pd.DataFrame({"filename": ["x.wav"], "label": ["unseen" if isinstance(labels[0], str) else 7]})
    with pytest.raises(KeyError, match="was not included in the training dataset"):
        ld._collated_targets(tl)
