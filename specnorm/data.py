"""Getting audio into fastai: `AudioBlock`, `audio_item_tfms`, `CrossValidationSplitter`, `get_dls`.

`get_dls` builds the DataLoaders of the reference ESC-50 workflow (a metadata CSV with a file name,
a label and a cross-validation fold per clip) from any DataFrame of that shape.
"""

from pathlib import Path

from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import ColReader

from .audio import AudioTensor
from .cache import AudioCache
from .signal import audio_item_tfms

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
    # The bound method, not the cache object: fastai reads its annotation (str | os.PathLike) as the input
    # types, so `dls.test_dl` and `learn.predict` take `Path`s as well as the strings the DataFrame gives.
    read = AudioTensor.create if cache_folder is None else AudioCache(cache_folder, sample_rate, force_mono).read
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
    **kwargs,
):
    """DataLoaders for audio classification from a DataFrame with file, label and fold columns.

    Args:
        df: one row per clip; `fn_col` names a file under `path` (ESC-50: `path/'audio'`, `meta/esc50.csv`).
        path: folder of the audio files.
        bs: batch size.
        item_tfms, batch_tfms: extra transforms (e.g. `AudioNormalize`; `AudioToSpec`, `SpecNormalize`).
        fold: the validation fold; the other folds train.
        sample_rate, force_mono, crop_signal_to, cache_folder: passed to `AudioBlock` (crop in milliseconds).
        **kwargs: passed on to fastai's `DataBlock.dataloaders` (`device`, `num_workers`, `shuffle`...).

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
    block = DataBlock(
        blocks=(AudioBlock(sample_rate, force_mono, crop_signal_to, cache_folder), CategoryBlock),
        get_x=ColReader(fn_col, pref=f"{path}/"),
        get_y=ColReader(label_col),
        splitter=CrossValidationSplitter(fold_col, fold),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    return block.dataloaders(df.reset_index(drop=True), bs=bs, **kwargs)
