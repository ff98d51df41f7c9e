"""Getting audio into fastai: `AudioBlock`, `audio_item_tfms`, `CrossValidationSplitter`, `get_dls`, and
fastaudio's file helpers (`AudioGetter`, `OpenAudio`; `get_audio_files` is in audio.py).

`get_dls` builds the DataLoaders of the reference ESC-50 workflow (a metadata CSV with a file name,
a label and a cross-validation fold per clip) from any DataFrame of that shape.
"""

import os
from pathlib import Path

import soundfile as sf
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.external import URLs
from fastai.data.transforms import ColReader, DisplayedTransform

from .audio import AudioTensor, get_audio_files
from .cache import AudioCache, preprocess_audio_folder
from .signal import audio_item_tfms
from .spectrogram import AudioToSpec

__all__ = [
    "AudioBlock",
    "AudioGetter",
    "CrossValidationSplitter",
    "OpenAudio",
    "get_dls",
]

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
    missing = [fn for fn in names if not (path / fn).is_file()]
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
    _check_table(df, path, fn_col, label_col, fold_col, sample_rate, crop_signal_to, item_tfms, batch_tfms)
    block = DataBlock(
        blocks=(AudioBlock(sample_rate, force_mono, crop_signal_to, cache_folder), CategoryBlock),
        get_x=ColReader(fn_col, pref=f"{path}/"),
        get_y=ColReader(label_col),
        splitter=CrossValidationSplitter(fold_col, fold),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    return block.dataloaders(df.reset_index(drop=True), bs=bs, **kwargs)
