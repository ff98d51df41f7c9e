"""Getting audio into fastai: `AudioBlock`, `audio_item_tfms`, `CrossValidationSplitter`, `get_dls`, and
fastaudio's file helpers (`audio_extensions`, `get_audio_files`, `AudioGetter`, `OpenAudio`).

`get_dls` builds the DataLoaders of the reference ESC-50 workflow (a metadata CSV with a file name,
a label and a cross-validation fold per clip) from any DataFrame of that shape.
"""

import mimetypes
from pathlib import Path

from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.external import URLs
from fastai.data.transforms import ColReader, DisplayedTransform, get_files

from .audio import AudioTensor
from .cache import AudioCache, preprocess_audio_folder
from .signal import audio_item_tfms

__all__ = [
    "AudioBlock",
    "AudioGetter",
    "CrossValidationSplitter",
    "OpenAudio",
    "audio_extensions",
    "get_audio_files",
    "get_dls",
]

# Every extension the system's MIME table calls audio, plus the formats libsndfile reads that some
# tables lack.
audio_extensions = tuple(
    sorted(
        {ext.lower() for ext, kind in mimetypes.types_map.items() if kind.startswith("audio/")}
        | {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64"}
    )
)

# fastaudio's dataset addresses, added to fastai's `URLs` where fastai lacks them (nothing is downloaded).
_DATASETS = {
    "ESC50": "https://github.com/karoldvl/ESC-50/archive/master.zip",
    "SPEAKERS10": "http://www.openslr.org/resources/45/ST-AEDS-20180100_1-OS.tgz",
    "SAMPLE_SPEAKERS10": "https://github.com/fastaudio/10_Speakers_Sample/archive/10_speakers_sample.zip",
}
for _name, _url in _DATASETS.items():
    if not hasattr(URLs, _name):
        setattr(URLs, _name, _url)


def get_audio_files(path, recurse=True, folders=None):
    """The audio files (by extension, `audio_extensions`) under `path`, recursively, only in `folders` if given.

    Example:
        >>> get_audio_files(path)   # doctest: +SKIP
        (#2000) [Path('ESC-50-master/audio/1-100032-A-0.wav'),...]
    """
    return get_files(path, extensions=audio_extensions, recurse=recurse, folders=folders)


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
        read = AudioTensor.create if cache_folder is None else AudioCache(cache_folder, sample_rate, force_mono)
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
