"""Getting audio into fastai: `AudioBlock`, `audio_item_tfms`, `CrossValidationSplitter`, `get_dls`.

`get_dls` builds the DataLoaders of the reference ESC-50 workflow (a metadata CSV with a file name,
a label and a cross-validation fold per clip) from any DataFrame of that shape. By default it decodes
every clip once into a `WaveformStore` and serves whole batches from it (`WaveformDL`); `fast=False`
gives fastai's per-item pipeline (`AudioBlock`), whose batches the fast path reproduces.
"""

import warnings
from pathlib import Path

import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import ColReader
from fastai.torch_core import default_device

from .audio import AudioTensor
from .cache import AudioCache
from .loader import AsFloat32, AudioDL, WaveformDL
from .signal import ResizeSignal, audio_item_tfms
from .store import WaveformStore

__all__ = ["AudioBlock", "CrossValidationSplitter", "get_dls"]


def AudioBlock(sample_rate=16000, force_mono=True, crop_signal_to=None, cache_folder=None):
    """A `TransformBlock` that reads audio files as `AudioTensor` and applies `audio_item_tfms`.

    With `cache_folder`, files are read through an `AudioCache`: decoded, downmixed and resampled
    once, then read back as ready float32 arrays in later epochs and runs.

    Example:
        >>> block = AudioBlock(sample_rate=16000, crop_signal_to=5000)
        >>> [type(t).__name__ for t in block.item_tfms[1:]]   # after fastai's ToTensor
        ['Resample', 'DownmixMono', 'ResizeSignal']
    """
    read = AudioTensor.create if cache_folder is None else AudioCache(cache_folder, sample_rate, force_mono)
    return TransformBlock(type_tfms=read, item_tfms=audio_item_tfms(sample_rate, force_mono, crop_signal_to))


def _require_columns(df, *cols):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"the DataFrame has no column {', '.join(map(repr, missing))} (its columns: {list(df.columns)})"
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
            raise ValueError(f"fold {fold!r} has no rows in column {col!r} (its values: {sorted(df[col].unique())})")
        if is_valid.all():
            raise ValueError(f"every row is in fold {fold!r} of column {col!r}: nothing is left to train on")
        return (~is_valid).nonzero()[0].tolist(), is_valid.nonzero()[0].tolist()

    return _split


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
    sample_rate=16000,
    force_mono=True,
    crop_signal_to=None,
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
        sample_rate (int or None): resample every clip to this rate. None keeps each file's rate, and then
            the clips must share one rate (a batch has one `sr`): mixed rates raise a `ValueError` naming them.
        force_mono (bool): average the channels.
        crop_signal_to (float or None): crop or pad every clip to this many milliseconds (`ResizeSignal`);
            None keeps whole clips (the fast path pads each batch at the end to its longest clip).
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
    _require_columns(df, fn_col, label_col, fold_col)
    if not path.is_dir():
        raise FileNotFoundError(f"audio folder not found: {path}")
    missing = [fn for fn in df[fn_col] if not (path / fn).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in column {fn_col!r} are not in {path}: "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
        )
    df = df.reset_index(drop=True)
    pref = f"{path}/"
    block = DataBlock(
        blocks=(
            AudioBlock(sample_rate, force_mono, crop_signal_to, None if fast else cache_folder),
            CategoryBlock,
        ),
        get_x=ColReader(fn_col, pref=pref),
        get_y=ColReader(label_col),
        splitter=CrossValidationSplitter(fold_col, fold),
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
    store = WaveformStore.build(
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
