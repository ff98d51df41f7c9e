"""Getting audio into fastai: `AudioBlock`, `audio_item_tfms`, `CrossValidationSplitter`, `get_dls`, and
fastaudio's file helpers (`AudioGetter`, `OpenAudio`; `get_audio_files` is in audio.py).

`get_dls` builds the DataLoaders of the reference ESC-50 workflow (a metadata CSV with a file name,
a label and a cross-validation fold per clip) from any DataFrame of that shape. By default it decodes
every clip once into a `WaveformStore` and serves whole batches from it (`WaveformDL`); `fast=False`
gives fastai's per-item pipeline (`AudioBlock`), whose batches the fast path reproduces.
"""

import numbers
import os
import warnings
from pathlib import Path

import soundfile as sf
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.external import URLs
from fastai.data.transforms import CategoryMap, ColReader, DisplayedTransform
from fastai.torch_core import default_device

from .audio import AudioTensor, get_audio_files
from .cache import AudioCache, preprocess_audio_folder
from .distributed import agree, is_distributed, rank
from .loader import AsFloat32, AudioDL, WaveformDL
from .signal import ResizeSignal, audio_item_tfms
from .spectrogram import AudioToSpec
from .store import WaveformStore
from .survey import survey_audio

__all__ = [
    "AUTO_MAX_SAMPLE_RATE",
    "AudioBlock",
    "AudioGetter",
    "CrossValidationSplitter",
    "OpenAudio",
    "auto_settings",
    "get_dls",
]

# `sample_rate='auto'` keeps a dataset's own rate up to this (Hz): higher rates are downsampled, none upsampled.
AUTO_MAX_SAMPLE_RATE = 16000

# fastaudio's dataset addresses, added to fastai's `URLs` where fastai lacks them (nothing is downloaded).
_DATASETS = {
    "ESC50": "https://github.com/karoldvl/ESC-50/archive/master.zip",
    "SPEAKERS10": "http://www.openslr.org/resources/45/ST-AEDS-20180100_1-OS.tgz",
    "SAMPLE_SPEAKERS10": "https://github.com/fastaudio/10_Speakers_Sample/archive/10_speakers_sample.zip",
}
for _name, _url in _DATASETS.items():
    if not hasattr(URLs, _name):
        setattr(URLs, _name, _url)


def AudioGetter(suf="", recurse=True, folders=None):
    "A `get_items` function for `DataBlock`: the audio files under `path/suf` (see `get_audio_files`)."

    def _get(path, recurse=recurse, folders=folders):
        return get_audio_files(Path(path) / suf, recurse, folders)

    return _get


class OpenAudio(DisplayedTransform):
    """Read item `i` of the list of files `items` as an `AudioTensor`; decodes back to the file name.

    Example:
        >>> OpenAudio(['a.wav', 'b.wav'])(1)   # doctest: +SKIP
        AudioTensor([[...]])
    """

    def __init__(self, items):
        super().__init__()
        self.items = items

    def encodes(self, i):  # untyped: numpy and torch integers index too
        return AudioTensor.create(self.items[i])

    def decodes(self, i):
        return self.items[i]


class AudioBlock(TransformBlock):
    """A `TransformBlock` that reads audio files as `AudioTensor` and applies `audio_item_tfms`.

    With `cache_folder`, files are read through an `AudioCache`: decoded, downmixed and resampled
    once, then read back as ready float32 arrays in later epochs and runs. A class (as in fastaudio):
    `DataBlock(blocks=(AudioBlock, CategoryBlock))` builds one with the defaults, and it can be
    subclassed and checked with `isinstance`.

    Example:
        >>> block = AudioBlock(sample_rate=16000, crop_signal_to=5000)
        >>> [type(t).__name__ for t in block.item_tfms[1:]]   # after fastai's ToTensor
        ['Resample', 'DownmixMono', 'ResizeSignal']
    """

    def __init__(self, sample_rate=16000, force_mono=True, crop_signal_to=None, cache_folder=None):
        # The bound method, not the cache object: fastai reads its annotation (str | os.PathLike) as the input
        # types, so `dls.test_dl` and `learn.predict` take `Path`s as well as the strings the DataFrame gives.
        read = AudioTensor.create if cache_folder is None else AudioCache(cache_folder, sample_rate, force_mono).read
        super().__init__(type_tfms=read, item_tfms=audio_item_tfms(sample_rate, force_mono, crop_signal_to))
        self.sample_rate, self.force_mono, self.crop_signal_to = sample_rate, force_mono, crop_signal_to
        self.cache_folder = cache_folder

    @classmethod
    def from_folder(cls, path, sample_rate=16000, force_mono=True, crop_signal_to=None, cache_folder=None, **kwargs):
        """Decode every audio file under `path` into the cache now (in parallel), and read through it.

        The cache goes to `cache_folder`, by default `<path>_cached` beside `path` (fastaudio's place);
        `kwargs` go to `preprocess_audio_folder` (`n_workers`, `progress`).
        """
        path = Path(path)
        cache_folder = path.parent / f"{path.name}_cached" if cache_folder is None else cache_folder
        preprocess_audio_folder(
            get_audio_files(path), cache_folder, sample_rate=sample_rate, force_mono=force_mono, **kwargs
        )
        return cls(sample_rate, force_mono, crop_signal_to, cache_folder)


def _require_columns(df, *cols):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"the DataFrame has no column {', '.join(map(repr, missing))} (its columns: {list(df.columns)})"
        )


def _rows(df, mask, limit=5):
    "The index labels of `df` where `mask` holds, for messages."
    idx = df.index[mask].tolist()
    return f"{', '.join(map(repr, idx[:limit]))}{' ...' if len(idx) > limit else ''}"


def _min_samples(*tfms):
    "Fewest samples the spectrogram transforms among `tfms` (each a transform, a list or None) take."
    flat = [t for ts in tfms for t in (ts if isinstance(ts, (list, tuple)) else [ts])]
    # torch's reflect padding of centred frames needs more samples than n_fft // 2
    n_ffts = [t.settings.get("n_fft", 400) for t in flat if isinstance(t, AudioToSpec)]
    return max(n_ffts) // 2 + 1 if n_ffts else 1


def _check_table(
    df, path, fn_col, label_col, fold_col, sample_rate=None, crop_signal_to=None, item_tfms=None, batch_tfms=None
):
    """Check `get_dls`'s DataFrame and files up front; every error names the column, the rows and the values.

    File names must be strings (or paths) relative to `path` that stay inside it (no absolute paths, no
    `..` out of the folder) and name existing files; labels and folds must not be empty (NaN). Without
    `crop_signal_to` (which pads), every file must hold enough samples, at `sample_rate`, for the
    spectrogram transforms in `item_tfms` and `batch_tfms` (headers only are read).
    """
    path = Path(path)
    _require_columns(df, fn_col, label_col, fold_col)
    if not path.is_dir():
        raise FileNotFoundError(f"audio folder not found: {path}")
    if len(df) == 0:
        raise ValueError("the DataFrame has no rows")
    names = df[fn_col]
    for col in (fn_col, label_col, fold_col):
        empty = df[col].isna().to_numpy()
        if empty.any():
            raise ValueError(
                f"column {col!r} is empty (NaN or None) in {int(empty.sum())} rows, index {_rows(df, empty)}: "
                "fill them in or drop those rows"
            )
    bad = ~names.map(lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "").to_numpy()
    if bad.any():
        first = names[bad].iloc[0]
        raise ValueError(
            f"column {fn_col!r} must hold file names (strings), but rows with index {_rows(df, bad)} hold "
            f"values such as {first!r} ({type(first).__name__})"
        )
    absolute = names.map(lambda v: os.path.isabs(v)).to_numpy()
    if absolute.any():
        raise ValueError(
            f"column {fn_col!r} must hold file names relative to {path}, but rows with index {_rows(df, absolute)} "
            f"hold absolute paths such as {names[absolute].iloc[0]!r}"
        )
    root = os.path.abspath(path)  # lexical, like the join that reads the files: symlinks inside the folder are fine
    outside = names.map(lambda v: not os.path.abspath(os.path.join(root, v)).startswith(root + os.sep)).to_numpy()
    if outside.any():
        raise ValueError(
            f"column {fn_col!r}: rows with index {_rows(df, outside)} name files outside the audio folder {path}, "
            f"such as {names[outside].iloc[0]!r}"
        )
    missing = [fn for fn in names if not os.path.isfile(os.path.join(root, fn))]  # a Path per row: twice the time
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in column {fn_col!r} are not in {path}: "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
        )
    need = _min_samples(item_tfms, batch_tfms)
    if crop_signal_to is None and need > 1:
        short = []
        for fn in names:
            try:
                info = sf.info(path / fn)
            except (sf.LibsndfileError, RuntimeError) as e:
                if not os.access(path / fn, os.R_OK):
                    raise PermissionError(f"cannot read audio file {path / fn}: permission denied") from e
                raise ValueError(f"cannot decode audio file {path / fn} (not audio, or corrupt): {e}") from e
            n = info.frames if sample_rate is None else info.frames * sample_rate // info.samplerate
            if n < need:
                short.append(f"{fn} ({n} samples)")
        if short:
            raise ValueError(
                f"{len(short)} files are too short for the spectrogram's n_fft (it needs at least {need} samples"
                f"{'' if sample_rate is None else f' at {sample_rate} Hz'}): {', '.join(short[:5])}"
                f"{' ...' if len(short) > 5 else ''}; pad them with crop_signal_to=..., or drop them"
            )


def CrossValidationSplitter(col="fold", fold=1):
    """Split a DataFrame by a fold column: rows where `df[col] == fold` are the validation set.

    Example:
        >>> import pandas as pd
        >>> CrossValidationSplitter(fold=2)(pd.DataFrame({'fold': [1, 2, 1, 2]}))
        ([0, 2], [1, 3])
    """

    def _split(df):
        _require_columns(df, col)
        is_valid = (df[col] == fold).to_numpy()
        if not is_valid.any():
            values = sorted(df[col].unique().tolist(), key=str)  # key=str: NaN, or strings mixed with numbers
            same = [v for v in values if str(v) == str(fold)]  # e.g. fold=1 for a column of strings '1', '2', ...
            hint = f": did you mean fold={same[0]!r}?" if same else ""
            raise ValueError(f"fold {fold!r} has no rows in column {col!r} (its values: {values}){hint}")
        if is_valid.all():
            raise ValueError(f"every row is in fold {fold!r} of column {col!r}: nothing is left to train on")
        return (~is_valid).nonzero()[0].tolist(), is_valid.nonzero()[0].tolist()

    return _split


def auto_settings(files, sample_rate="auto", crop_signal_to="auto"):
    """`(sample_rate, crop_signal_to)` with each `'auto'` replaced by the default `survey_audio` derives from
    `files`' headers: the dataset's own rate capped at `AUTO_MAX_SAMPLE_RATE` (no upsampling), and the 90th
    percentile of the clip lengths in 100 ms steps. Other values are checked and returned as they are.

    Example:
        >>> auto_settings([], 16000, 5000)
        (16000, 5000)
    """
    if not (sample_rate in ("auto", None) or (isinstance(sample_rate, numbers.Integral) and sample_rate > 0)):
        raise ValueError(f"sample_rate must be a positive int (Hz), 'auto' or None, not {sample_rate!r}")
    if not (crop_signal_to in ("auto", None) or (isinstance(crop_signal_to, numbers.Real) and crop_signal_to > 0)):
        raise ValueError(f"crop_signal_to must be a positive number (ms), 'auto' or None, not {crop_signal_to!r}")
    if "auto" not in (sample_rate, crop_signal_to):
        return sample_rate, crop_signal_to
    try:
        survey = survey_audio(files, max_sample_rate=AUTO_MAX_SAMPLE_RATE)
    except ValueError as e:  # unreadable files, named
        raise ValueError(
            f"cannot decode audio file (not audio, or corrupt) to choose sample_rate/crop_signal_to='auto': {e}"
        ) from e
    return (
        survey.default_sample_rate if sample_rate == "auto" else sample_rate,
        survey.default_crop_ms if crop_signal_to == "auto" else crop_signal_to,
    )


def get_dls(
    df,
    path,
    bs=64,
    item_tfms=None,
    batch_tfms=None,
    fold=1,
    fn_col="filename",
    label_col="category",
    fold_col="fold",
    sample_rate="auto",
    force_mono=True,
    crop_signal_to="auto",
    cache_folder=None,
    fast=True,
    store_dtype="float32",
    pad_mode="zeros",
    store_on_device=None,
    **kwargs,
):
    """DataLoaders for audio classification from a DataFrame with file, label and fold columns.

    The fast path (default) decodes, downmixes and resamples every file once into a `WaveformStore`
    (in memory, or memory-mapped under `cache_folder` and reused by later runs), then makes each batch
    as one gather of crops from it (`WaveformDL`). Its batches equal those of the per-item path
    (`fast=False`: fastai's pipeline of `AudioBlock` item transforms) to float32 rounding (1e-6: the
    store downmixes before resampling), or to float16 rounding with `store_dtype='float16'` (a relative
    `store.FLOAT16_RTOL` = 2**-11 per sample, half the memory); the random crops are drawn the same way.

    Args:
        df: one row per clip; `fn_col` names a file under `path` (ESC-50: `path/'audio'`, `meta/esc50.csv`).
        path: folder of the audio files.
        bs: batch size. If it exceeds the training clips (so the training DataLoader, which drops its
            last partial batch, would be empty), the training batch size becomes the number of training
            clips, with a warning; the validation batch size stays `bs`.
        item_tfms, batch_tfms: extra transforms (e.g. `AudioNormalize`; `AudioToSpec`, `SpecNormalize`).
            On the fast path item transforms run per item on the cropped clips (slower than batch ones).
        fold: the validation fold; the other folds train.
        sample_rate (int, 'auto' or None): resample every clip to this rate. `'auto'` (default): the
            dataset's own rate, never upsampled, capped at `AUTO_MAX_SAMPLE_RATE` = 16 kHz (`survey_audio`'s
            `default_sample_rate`: the highest rate 90% of the files have natively; 8 kHz data stays at
            8 kHz, 44.1 kHz data goes to 16 kHz). None keeps each file's rate, and then the clips must share
            one rate (a batch has one `sr`): mixed rates raise a `ValueError` naming them.
        force_mono (bool): average the channels.
        crop_signal_to (float, 'auto' or None): crop or pad every clip to this many milliseconds
            (`ResizeSignal`). `'auto'` (default): the 90th percentile of the clip lengths, rounded up to
            100 ms (`survey_audio`'s `default_crop_ms`), so 90% of the clips are kept whole and a 0.5 s dataset
            is not padded to 5 s; the survey warns when a tenth of the clips would still be more than half
            padding. None keeps whole clips (the fast path pads each batch at the end to its longest clip).
            Padding never counts in the statistics or normalizations (batches carry `lengths`/`pad_before`).
        cache_folder: where the store lives on disk (fast path; `AudioCache` files with `fast=False`).
            None keeps the store in memory for the session.
        fast (bool): the store and `WaveformDL` (True) or fastai's per-item pipeline (False).
        store_dtype (str): `'float32'` (default, exact) or `'float16'` (half the memory) samples in the store.
        pad_mode (str): how `crop_signal_to` pads short clips: `'zeros'`, `'zeros_after'` or `'repeat'`.
        store_on_device (bool or None): copy the store once to the GPU and gather batches there (`WaveformDL`'s
            `on_device`). None: when the device is a GPU, `num_workers` is 0 and the store takes under a
            quarter of the GPU's free memory (ESC-50 at 16 kHz: 640 MB).
        **kwargs: passed on to fastai's `DataLoaders` (`device`, `num_workers`, `shuffle`, `pin_memory`...).
            On the fast path `num_workers` defaults to 0 (a batch is one gather: workers only add copies)
            and `pin_memory` to True when the device is a GPU.

    Batches are `(AudioTensor [B, C, T], TensorCategory [B])`, the `AudioTensor` carrying `lengths`,
    the int64 `[B]` valid (unpadded) samples of each clip, on the batch's device.

    Example:
        >>> dls = get_dls(df, path/'audio', bs=32, crop_signal_to=5000,
        ...               batch_tfms=[AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())])  # doctest: +SKIP
    """
    path = Path(path)
    auto = "auto" in (sample_rate, crop_signal_to)
    if auto:  # the files' headers are read: check the table first
        _check_table(df, path, fn_col, label_col, fold_col, crop_signal_to=1)  # names, labels, folds, files
    files = [path / fn for fn in df[fn_col]] if auto else []
    sample_rate, crop_signal_to = auto_settings(files, sample_rate, crop_signal_to)
    _check_table(df, path, fn_col, label_col, fold_col, sample_rate, crop_signal_to, item_tfms, batch_tfms)
    df = df.reset_index(drop=True)
    pref = f"{path}/"
    splitter = CrossValidationSplitter(fold_col, fold)
    # The vocabulary fastai's `Categorize.setups` would make from the training labels, made from the column:
    # fastai reads them row by row through `ColReader`, tens of microseconds a row (ESC-50: 0.1 s).
    vocab = CategoryMap(list(df[label_col].to_numpy()[splitter(df)[0]]), sort=True)
    block = DataBlock(
        blocks=(
            AudioBlock(sample_rate, force_mono, crop_signal_to, None if fast else cache_folder),
            CategoryBlock(vocab=vocab),
        ),
        get_x=ColReader(fn_col, pref=pref),
        get_y=ColReader(label_col),
        splitter=splitter,
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    if pad_mode not in ResizeSignal.pad_modes:
        raise ValueError(f"pad_mode must be one of {ResizeSignal.pad_modes}, not {pad_mode!r}")
    if crop_signal_to is not None and pad_mode != "zeros":
        for tfm in block.item_tfms:
            if hasattr(tfm, "pad_mode"):
                tfm.pad_mode = pad_mode
    dsets = block.datasets(df)
    kwargs = _fit_batch_size(bs, len(dsets.train), kwargs)
    if not fast:
        return dsets.dataloaders(
            path=path, dl_type=AudioDL, after_item=block.item_tfms, after_batch=block.batch_tfms, **kwargs
        )
    device = torch.device(kwargs.get("device") or default_device())
    store = _build_store(
        [f"{pref}{fn}" for fn in df[fn_col]],
        cache_folder,
        sample_rate=sample_rate,
        force_mono=force_mono,
        dtype=store_dtype,
        device=device,
    )
    rates = sorted(set(store.rates.tolist()))
    if len(rates) > 1:
        examples = ", ".join(f"{df[fn_col][store.rates.tolist().index(r)]}: {r} Hz" for r in rates[:4])
        raise ValueError(
            f"sample_rate=None keeps each file's rate, but the clips have {len(rates)} rates ({examples}) "
            f"and a batch has one: pass sample_rate= to resample them to one rate"
        )
    kwargs.setdefault("num_workers", 0)
    if store_on_device is None:
        store_on_device = (
            device.type == "cuda"
            and kwargs["num_workers"] == 0
            and store.nbytes < torch.cuda.mem_get_info(device)[0] / 4
        )
    # Batches gathered on the GPU need no pinned host memory; host batches copy faster from it.
    kwargs.setdefault("pin_memory", device.type == "cuda" and not store_on_device)
    return dsets.dataloaders(
        path=path,
        dl_type=WaveformDL,
        store=store,
        fn_col=fn_col,
        pref=pref,
        duration=crop_signal_to,
        pad_mode=pad_mode,
        after_item=item_tfms,
        per_item_tfms=block.item_tfms,
        on_device=store_on_device,
        after_batch=[AsFloat32(), *block.batch_tfms],
        **kwargs,
    )


def _build_store(files, folder, **settings):
    """`WaveformStore.build`, decoded once under torch.distributed: with a `folder` that every rank sees,
    rank 0 decodes and writes the store while the other ranks wait, then they open it. A failure on rank 0
    raises on every rank (`agree`). Without a folder each rank decodes its own copy in memory."""
    if folder is None or not is_distributed():
        return WaveformStore.build(files, folder, **settings)
    store = error = None
    if rank() == 0:
        try:
            store = WaveformStore.build(files, folder, **settings)
        except Exception as e:
            error = e
    agree(error)
    return store if store is not None else WaveformStore.build(files, folder, **settings)


def _fit_batch_size(bs, n_train, kwargs):
    "fastai drops the last partial training batch: with `bs > n_train` it would train on nothing."
    drop_last = kwargs.get("drop_last", kwargs.get("shuffle", True))
    if drop_last and bs > n_train:
        warnings.warn(
            f"bs={bs} is larger than the {n_train} training clips: the training batches have {n_train} clips",
            stacklevel=3,
        )
        return dict(kwargs, bs=n_train, val_bs=kwargs.get("val_bs", bs))
    return dict(kwargs, bs=bs)
