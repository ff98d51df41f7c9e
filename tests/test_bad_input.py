"""Bad input never gives a silent wrong result, a hang or a traceback without a name (issue 13).

Each test reproduces one scenario of the robustness audit: an error must have a clear type and name the
file, column, row, value or rank; a result must match an independent float64 numpy reference.
"""

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import init_gloo, make_esc50_like, run_ranks, tone, write_audio
from safetensors import safe_open
from safetensors.torch import save_file

import specnorm.cache as cache_module
from specnorm.audio import AudioTensor
from specnorm.cache import AudioCache, preprocess_audio_folder
from specnorm.config import AudioConfig
from specnorm.data import CrossValidationSplitter, get_dls
from specnorm.signal import DownmixMono, Resample
from specnorm.spectrogram import AudioToSpec
from specnorm.stats import StatsRecorder

GLOBAL, CHANNEL = (0, 2, 3), (0, 1, 3)


def np_stats(arrays, dims):
    "float64 numpy (mean, population std) over `dims` of the concatenated finite values of `arrays`."
    a = np.concatenate([np.asarray(x, np.float64) for x in arrays], 0)
    keep = np.isfinite(a)
    n = keep.sum(dims, keepdims=True)
    mean = np.where(keep, a, 0).sum(dims, keepdims=True) / n
    var = np.where(keep, (a - mean) ** 2, 0).sum(dims, keepdims=True) / n
    return mean, np.sqrt(var)


def assert_stats(rec, arrays, dims):
    mean, std = np_stats(arrays, dims)
    np.testing.assert_allclose(rec.mean.double().numpy(), mean, rtol=1e-6, atol=1e-6 * std.max())
    np.testing.assert_allclose(rec.std.double().numpy(), std, rtol=1e-6)


# -- all_reduce: mismatches and local failures raise the same error on every rank, at once (items 1, 2) ------
PG_TIMEOUT = 30  # seconds; a rank left waiting in a collective would take this long to fail


def _rank_data(rank):
    return torch.randn(4 + rank, 1, 6, 10, generator=torch.Generator().manual_seed(rank)) * 3 + rank


def _mismatch_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    init_gloo(rank, world, port, timeout_s=PG_TIMEOUT)
    x = _rank_data(rank)
    with_nan = x.clone()
    with_nan[0, 0, 2, 3] = float("nan")
    cases = {
        "red_dims": lambda: StatsRecorder(CHANNEL if rank == 0 else GLOBAL).update(x),
        "nan_policy": lambda: StatsRecorder(nan_policy="raise" if rank == 0 else "omit").update(x),
        "correction": lambda: StatsRecorder(correction=rank).update(x),
        "shape": lambda: StatsRecorder(CHANNEL).update(torch.randn(4, 1, 6 + rank, 10)),
        "nan": lambda: StatsRecorder().update(x if rank == 0 else with_nan),
        "ndim9": lambda: StatsRecorder((0,)).update(torch.randn(2, 3) if rank == 0 else torch.randn(2, *[1] * 7, 3)),
    }
    results = {}
    try:
        for name, make in cases.items():
            rec, start = make(), time.monotonic()
            try:
                rec.all_reduce()
                results[name] = {"type": None}
            except Exception as e:
                results[name] = {"type": type(e).__name__, "msg": str(e)}
            results[name]["seconds"] = time.monotonic() - start
        good = StatsRecorder(CHANNEL).update(x).all_reduce()  # the group still works after the errors
        results["good"] = {"mean": good.mean.tolist(), "std": good.std.tolist(), "n": good.nobservations}
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_mismatches_and_local_failures_raise_on_every_rank(tmp_path):
    run_ranks(_mismatch_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = {
        "red_dims": r"red_dims \(rank 0: \(0, 1, 3\), rank 1: \(0, 2, 3\)\)",
        "nan_policy": r"nan_policy \(rank 0: 'raise', rank 1: 'omit'\)",
        "correction": r"correction \(rank 0: 0, rank 1: 1\)",
        "shape": r"rank 0: \(4, 1, 6, 10\), rank 1: \(4, 1, 7, 10\)",
        "nan": r"rank 1's batch 0 .* holds 1 NaN or Inf",
        "ndim9": r"rank 1: its batches have 9 dims",
    }
    for name, pattern in expected.items():
        got = [r[name] for r in ranks]
        assert [g["type"] for g in got] == ["ValueError", "ValueError"], (name, got)
        assert got[0]["msg"] == got[1]["msg"], name  # the same error on every rank
        assert __import__("re").search(pattern, got[0]["msg"]), (name, got[0]["msg"])
        # prompt: nobody waited for the process group's timeout
        assert max(g["seconds"] for g in got) < PG_TIMEOUT / 2, (name, got)
    arrays = [_rank_data(r).numpy() for r in (0, 1)]
    mean, std = np_stats(arrays, CHANNEL)
    for r in ranks:
        np.testing.assert_allclose(np.array(r["good"]["mean"]), mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.array(r["good"]["std"]), std, rtol=1e-6)
        assert r["good"]["n"] == 9


# -- stats files: the checksum covers every setting (item 4); saving names the target (item 18) --------------
def _saved(tmp_path, **kwargs):
    x = torch.randn(5, 1, 4, 7, generator=torch.Generator().manual_seed(1)) * 2 + 3
    return StatsRecorder(CHANNEL, **kwargs).update(x).save(tmp_path / "stats.safetensors"), x


def test_correction_edited_in_place_is_rejected(tmp_path):
    path, _ = _saved(tmp_path)
    raw = path.read_bytes()
    edited = raw.replace(b'\\"correction\\": 0', b'\\"correction\\": 1')
    assert edited != raw and len(edited) == len(raw)
    (tmp_path / "edited.safetensors").write_bytes(edited)
    with pytest.raises(ValueError, match=r"edited.safetensors: .*SHA-256 checksum"):
        StatsRecorder.load(tmp_path / "edited.safetensors")


@pytest.mark.parametrize(
    "key,value",
    [
        ("correction", 1),
        ("nobservations", 99),
        ("nbatches", 3),
        ("nan_policy", "omit"),
        ("omitted", 4),
        ("settings", {"sr": 8000}),
        ("red_dims", [0, 1, 2, 3]),
        ("batch_shape", [5, 1, 4, 8]),
    ],
)
def test_any_edited_setting_is_rejected(tmp_path, key, value):
    path, _ = _saved(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    assert config[key] != value
    config[key] = value  # the old checksum stays
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta | {"config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"edited.safetensors: .*checksum: the file was modified or corrupted"):
        StatsRecorder.load(tmp_path / "edited.safetensors")


def test_swapped_tensor_of_another_dtype_is_rejected(tmp_path):
    path, _ = _saved(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["mean"] = tensors["mean"].bfloat16()  # numpy has no bfloat16: the checksum must still be computed
    save_file(tensors, str(tmp_path / "bf16.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"bf16.safetensors: .*checksum"):
        StatsRecorder.load(tmp_path / "bf16.safetensors")


def test_unedited_file_loads_and_old_format_is_named(tmp_path):
    path, x = _saved(tmp_path, correction=1)
    rec = StatsRecorder.load(path)
    assert rec.correction == 1
    a = x.double().numpy()
    np.testing.assert_allclose(rec.std.double().numpy(), a.std(CHANNEL, ddof=1, keepdims=True), rtol=1e-6)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta | {"format": "specnorm.StatsRecorder/1"})
    with pytest.raises(ValueError, match=r"old.safetensors was written by an earlier specnorm"):
        StatsRecorder.load(tmp_path / "old.safetensors")


def test_save_errors_name_the_target_not_a_temporary_file(tmp_path):
    rec = StatsRecorder().update(torch.randn(2, 1, 3, 4))
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "file" / "stats.safetensors", NotADirectoryError),  # under a regular file
        (tmp_path / "missing" / "stats.safetensors", FileNotFoundError),
        (tmp_path / "folder", IsADirectoryError),
    ]
    for target, error in cases:
        with pytest.raises(error) as info:
            rec.save(target)
        assert str(target) in str(info.value) and ".tmp" not in str(info.value), info.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # no temporary file left behind
    assert not list((tmp_path / "folder").iterdir())


def test_state_with_omitted_values_under_raise_is_rejected():
    state = StatsRecorder(GLOBAL).update(torch.randn(2, 1, 3, 4)).state_dict()
    with pytest.raises(ValueError, match=r"'omitted' must be .* 0 with nan_policy='raise', got 3"):
        StatsRecorder().load_state_dict(state | {"omitted": 3})
    rec = StatsRecorder().load_state_dict(state | {"omitted": 3, "nan_policy": "omit"})
    assert rec.omitted == 3 and rec.mean.shape == (1, 1, 1, 1)


# -- merging recorders of different nan_policy (item 6) --------------------------------------------------
def test_merging_policies_is_defined_in_both_orders():
    gen = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(3, 1, 4, 6, generator=gen), torch.randn(2, 1, 4, 6, generator=gen) + 1
    x2_nan = x2.clone()
    x2_nan[0, 0, 1, 1] = float("nan")
    raising = StatsRecorder(GLOBAL).update(x1)
    omitting = StatsRecorder(GLOBAL, nan_policy="omit").update(x2_nan)
    for a, b in [(raising, omitting), (omitting, raising), (StatsRecorder(GLOBAL), omitting)]:
        with pytest.raises(ValueError, match=r"cannot merge .*nan_policy='(omit|raise)' \((1|0) values omitted\)"):
            a + b
    # an 'omit' recorder that left nothing out merges either way, keeping the receiver's policy
    clean = StatsRecorder(GLOBAL, nan_policy="omit").update(x2)
    for a, b in [(raising, clean), (clean, raising)]:
        merged = a + b
        assert merged.nan_policy == a.nan_policy and merged.omitted == 0 and merged.nobservations == 5
        assert_stats(merged, [x1.numpy(), x2.numpy()], GLOBAL)
    empty_raise = StatsRecorder(GLOBAL).merge(clean)
    assert empty_raise.nan_policy == "raise"
    assert_stats(empty_raise, [x2.numpy()], GLOBAL)
    # two 'omit' recorders: omitted counts add up, NaN left out of the statistics
    both = omitting + StatsRecorder(GLOBAL, nan_policy="omit").update(x2_nan)
    assert both.omitted == 2
    assert_stats(both, [x2_nan.numpy(), x2_nan.numpy()], GLOBAL)


# -- AudioTensor.create: truncated, unreadable, path-like, reading options (items 5, 18; #14) ----------------
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_truncated_wav_raises_naming_the_file(tmp_path, subtype):
    fn = tmp_path / f"cut_{subtype}.wav"
    sf.write(fn, tone(440, 16000, 1.0)[0], 16000, subtype=subtype)
    raw = fn.read_bytes()
    fn.write_bytes(raw[: len(raw) // 2])
    assert sf.info(fn).frames < 16000  # libsndfile itself reads the half without an error
    with pytest.raises(ValueError, match=rf"{fn.name} is truncated: it holds \d+ of the 16000 samples"):
        AudioTensor.create(fn)


def test_cut_flac_raises_naming_the_file(tmp_path):
    fn = tmp_path / "cut.flac"
    sf.write(fn, tone(440, 16000, 1.0)[0], 16000)
    fn.write_bytes(fn.read_bytes()[: len(fn.read_bytes()) // 2])
    with pytest.raises(ValueError, match="cut.flac"):
        AudioTensor.create(fn)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_says_so(tmp_path):
    fn = write_audio(tmp_path / "locked.wav", tone(440, 8000, 0.1), 8000)
    fn.chmod(0)
    with pytest.raises(PermissionError, match=r"cannot read audio file .*locked.wav: Permission denied"):
        AudioTensor.create(fn)


def test_unreadable_file_says_so_even_as_root(tmp_path, monkeypatch):
    fn = write_audio(tmp_path / "locked.wav", tone(440, 8000, 0.1), 8000)

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr("specnorm.audio.open", denied, raising=False)  # what open() does for a non-root user
    with pytest.raises(PermissionError, match=r"cannot read audio file .*locked.wav: Permission denied"):
        AudioTensor.create(fn)


class _PathLike:
    def __init__(self, p):
        self.p = p

    def __fspath__(self):
        return str(self.p)


def test_create_takes_any_path_like_and_reading_options(tmp_path):
    data = tone(440, 8000, 0.5, channels=2)
    fn = write_audio(tmp_path / "a.flac", data, 8000)
    for arg in (str(fn), fn, _PathLike(fn)):
        np.testing.assert_allclose(AudioTensor.create(arg).numpy(), data, atol=1 / 32768)
    part = AudioTensor.create(fn, frame_offset=1000, num_frames=300)  # fastaudio's torchaudio.load names
    np.testing.assert_allclose(part.numpy(), data[:, 1000:1300], atol=1 / 32768)
    assert part.sr == 8000 and not hasattr(part, "frame_offset")
    np.testing.assert_allclose(AudioTensor.create(fn, frame_offset=3900).numpy(), data[:, 3900:], atol=1 / 32768)
    np.testing.assert_allclose(AudioTensor.create(fn, start=10, stop=20).numpy(), data[:, 10:20], atol=1 / 32768)
    with pytest.raises(TypeError, match=r"a.flac\) got unknown options \['sr'\]"):
        AudioTensor.create(fn, sr=16000)
    with pytest.raises(TypeError, match="give 'start' once"):
        AudioTensor.create(fn, frame_offset=1, start=2)
    with pytest.raises(ValueError, match="frame_offset must be an int >= 0, got -5"):
        AudioTensor.create(fn, frame_offset=-5)
    with pytest.raises(ValueError, match="a.flac has no samples from sample 5000"):
        AudioTensor.create(fn, frame_offset=5000)


@pytest.mark.parametrize("cached", [False, True])
def test_test_dl_and_predict_style_inputs_take_paths(tmp_path, cached):
    df = make_esc50_like(tmp_path, n_per_class=2, n_classes=2, sr=16000, seconds=0.5)
    audio = tmp_path / "audio"
    kwargs = dict(cache_folder=tmp_path / "cache") if cached else {}
    dls = get_dls(df, audio, bs=2, num_workers=0, **kwargs)
    fns = [audio / f for f in df.filename[:3]]
    by_str = dls.test_dl([str(f) for f in fns]).one_batch()[0]
    by_path = dls.test_dl(fns).one_batch()[0]
    expected = np.stack([sf.read(f, dtype="float32")[0][None] for f in fns[:2]])
    np.testing.assert_array_equal(by_path.cpu().numpy(), expected)  # batches are on the loaders' device
    np.testing.assert_array_equal(by_str.cpu().numpy(), expected)


# -- the cache: corrupt entries, killed writers, rewrites, duplicates (items 13, 14) ----------------------
def _corrupt(kind, path):
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zeroed":
        path.write_bytes(bytes(len(raw)))
    elif kind == "object":
        with open(path, "wb") as f:
            np.save(f, np.array([1, "a"], dtype=object), allow_pickle=True)
    elif kind == "wrong_shape":
        with open(path, "wb") as f:
            np.save(f, np.zeros(100, np.float32))
    elif kind == "wrong_rate":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 100), np.float32))


@pytest.mark.parametrize("kind", ["truncated", "empty", "zeroed", "object", "wrong_shape", "wrong_rate"])
def test_corrupt_cache_entry_is_rebuilt_from_its_source(tmp_path, kind):
    fn = write_audio(tmp_path / "s.wav", tone(500, 22050, 0.3, channels=2), 22050)
    expected = Resample(16000)(DownmixMono()(AudioTensor.create(fn))).numpy()
    cache = AudioCache(tmp_path / "cache", sample_rate=16000)
    cache(fn)
    entry = cache.path_for(fn)
    _corrupt(kind, entry)
    with pytest.warns(UserWarning, match=rf"cache entry .*{entry.name} of .*s.wav is corrupt"):
        got = cache(fn)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got.sr == 16000 and cache.rebuilt == 1
    fresh = AudioCache(tmp_path / "cache", sample_rate=16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fresh(fn).numpy(), expected)
    assert (fresh.hits, fresh.misses) == (1, 0)


def test_concurrent_writers_of_one_entry_do_not_collide(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    fn = write_audio(tmp_path / "s.wav", tone(500, 22050, 0.5), 22050)
    expected = Resample(16000)(AudioTensor.create(fn)).numpy()
    for round_ in range(5):
        caches = [AudioCache(tmp_path / f"cache{round_}") for _ in range(8)]  # 8 writers, none sees a hit
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda c: c(fn).numpy(), caches))
        for g in got:
            np.testing.assert_array_equal(g, expected)
        assert [p.suffix for p in caches[0].folder.iterdir()] == [".npy"]


def test_cache_write_errors_name_the_entry_and_source(tmp_path, monkeypatch):
    fn = write_audio(tmp_path / "s.wav", tone(500, 16000, 0.1), 16000)
    cache = AudioCache(tmp_path / "cache")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/random/.tmpXXXX")

    monkeypatch.setattr("specnorm._io.tempfile.mkstemp", denied)
    with pytest.raises(PermissionError, match=r"cannot write cache entry .*\.npy of .*s.wav: Permission denied") as e:
        cache(fn)
    assert "tmpXXXX" not in str(e.value)


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    folder = AudioCache(tmp_path / "cache").folder
    stale, fresh = folder / ".abc.x1y2.tmp", folder / ".abc.z3w4.tmp"
    for p in (stale, fresh):
        p.write_bytes(b"\0" * 1000)
    old = time.time() - cache_module.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    AudioCache(tmp_path / "cache")
    assert not stale.exists() and fresh.exists()  # a writer may still be busy with the fresh one


def test_rewrite_with_same_size_and_mtime_is_a_miss(tmp_path):
    fn = write_audio(tmp_path / "s.wav", tone(500, 16000, 0.2), 16000)
    st = fn.stat()
    cache = AudioCache(tmp_path / "cache", sample_rate=16000)
    cache(fn)
    write_audio(fn, tone(900, 16000, 0.2), 16000)  # same size
    os.utime(fn, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime, as `cp -p` would
    assert fn.stat().st_size == st.st_size and fn.stat().st_mtime_ns == st.st_mtime_ns
    np.testing.assert_array_equal(cache(fn).numpy(), AudioTensor.create(fn).numpy())
    assert cache.misses == 2


def test_preprocess_decodes_duplicates_and_symlinks_once(tmp_path):
    files = [write_audio(tmp_path / f"{i}.wav", tone(300 + 100 * i, 22050, 0.5), 22050) for i in range(3)]
    (tmp_path / "link.wav").symlink_to(files[0])
    listed = [files[0], files[0], tmp_path / "link.wav", str(files[1]), files[1], files[2]]
    for round_ in range(5):
        cache = preprocess_audio_folder(listed, tmp_path / f"cache{round_}", n_workers=4, progress=False)
        assert cache.misses == 3
        assert sorted(p.suffix for p in cache.folder.iterdir()) == [".npy"] * 3  # no temporary file left
    for fn in files:
        np.testing.assert_array_equal(cache(fn).numpy(), Resample(16000)(AudioTensor.create(fn)).numpy())


def test_preprocess_takes_fastaudios_folder_form(tmp_path):
    root = tmp_path / "data"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        write_audio(root / sub / f"{sub}.wav", tone(440, 8000, 0.25), 8000)
    (root / "a" / "notes.txt").write_text("not audio")
    out = preprocess_audio_folder(root, folders=["a"], progress=False)
    assert out == tmp_path / "data_cached"
    cache = AudioCache(out, sample_rate=16000)
    assert len(list(cache.folder.glob("*.npy"))) == 1
    cache(root / "a" / "a.wav")
    assert (cache.hits, cache.misses) == (1, 0)
    out2 = preprocess_audio_folder(root, output_dir=tmp_path / "elsewhere", sample_rate=8000, progress=False)
    assert out2 == tmp_path / "elsewhere" and len(list(AudioCache(out2, 8000).folder.glob("*.npy"))) == 2
    with pytest.raises(NotADirectoryError, match="a.wav is not a folder"):
        preprocess_audio_folder(root / "a" / "a.wav", tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="1 audio files not found: .*gone.wav"):
        preprocess_audio_folder([root / "gone.wav"], tmp_path / "c")


# -- get_dls: file names, labels, folds, short clips (items 17, 18) --------------------------------------
@pytest.fixture
def small(tmp_path):
    df = make_esc50_like(tmp_path, n_per_class=2, n_classes=2, sr=16000, seconds=0.3, folds=(1, 2))
    return df, tmp_path / "audio"


@pytest.mark.parametrize(
    "value,error,match",
    [
        (7, ValueError, r"column 'filename' must hold file names .* index 1 hold values such as 7 \(int\)"),
        (float("nan"), ValueError, r"column 'filename' is empty \(NaN or None\) in 1 rows, index 1"),
        ("ABS", ValueError, r"relative to .*audio, but rows with index 1 hold absolute paths such as '/.*\.wav'"),
        ("../outside.wav", ValueError, r"rows with index 1 name files outside the audio folder .*'../outside.wav'"),
        ("sub/../../outside.wav", ValueError, r"outside the audio folder .*'sub/../../outside.wav'"),
        ("gone.wav", FileNotFoundError, r"1 files listed in column 'filename' are not in .*: gone.wav"),
    ],
)
def test_bad_file_names_are_named(small, value, error, match):
    df, audio = small
    (audio.parent / "outside.wav").write_bytes((audio / df.filename[0]).read_bytes())
    df = df.astype({"filename": object})
    df.loc[1, "filename"] = str(audio / df.filename[1]) if value == "ABS" else value
    with pytest.raises(error, match=match):
        get_dls(df, audio, bs=2, num_workers=0)


def test_empty_label_or_fold_names_the_rows(small):
    df, audio = small
    labels = df.astype({"category": object})
    labels.loc[[0, 3], "category"] = None
    with pytest.raises(ValueError, match=r"column 'category' is empty \(NaN or None\) in 2 rows, index 0, 3"):
        get_dls(labels, audio, bs=2, num_workers=0)
    folds = df.astype({"fold": float})
    folds.loc[2, "fold"] = float("nan")
    with pytest.raises(ValueError, match=r"column 'fold' is empty .* index 2"):
        get_dls(folds, audio, bs=2, num_workers=0)


def test_splitter_message_with_strings_nan_and_an_absent_fold():
    df = pd.DataFrame({"fold": ["1", "2", float("nan"), "2"]})
    with pytest.raises(ValueError, match=r"fold '3' has no rows in column 'fold' \(its values: \['1', '2', nan\]\)$"):
        CrossValidationSplitter(fold="3")(df)
    with pytest.raises(ValueError, match=r"fold 1 has no rows .*: did you mean fold='1'\?"):
        CrossValidationSplitter(fold=1)(df)
    assert CrossValidationSplitter(fold="1")(df) == ([1, 2, 3], [0])


def test_clips_too_short_for_the_spectrogram_are_named(small):
    df, audio = small
    write_audio(audio / df.filename[3], tone(440, 16000, 0.01), 16000)  # 160 samples < n_fft // 2 + 1 = 201
    tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())]
    with pytest.raises(
        ValueError, match=rf"1 files are too short .*at least 201 samples at 16000 Hz\): {df.filename[3]} \(160"
    ):
        get_dls(df, audio, bs=2, num_workers=0, batch_tfms=tfms, crop_signal_to=None)
    with pytest.raises(ValueError, match=rf"too short .*: {df.filename[3]} \(160 samples\)"):
        get_dls(df, audio, bs=2, num_workers=0, item_tfms=tfms, crop_signal_to=None)
    dls = get_dls(df, audio, bs=2, num_workers=0, batch_tfms=tfms, crop_signal_to=300)  # the crop pads: fine
    assert dls.one_batch()[0].shape[0] == 2
