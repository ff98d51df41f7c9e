"""A disk cache of decoded, downmixed and resampled waveforms (fastaudio's `preprocess_audio_folder`).

Decoding and resampling a 44.1 kHz file costs more than everything else an audio item goes through,
and it gives the same result every epoch and every run. `AudioCache` does it once per file and
stores the float32 samples as `.npy` (read back with `allow_pickle=False`), so later epochs read
ready arrays. A cached file's name carries `source_key` of its source (path, size, mtime, inode, ctime), and the folder
it lives in carries the settings, so a changed source file or a changed setting is a cache miss,
never a stale hit. The cached waveform is exactly what `audio_item_tfms` would compute, so batches
with and without the cache are identical.

Every entry read is checked (a float32 `[1 + channels, samples]` array whose first row is the sample rate,
finite samples); a truncated, empty, zeroed or foreign entry is rebuilt from its source with a warning that
names both. Each writer writes a temporary file of its own (`tempfile.mkstemp` in the cache folder) and
renames it into place, so threads, processes and DataLoader workers can fill one cache at once; the
temporary files a killed writer left behind are removed when a cache opens the folder after
`STALE_TMP_SECONDS`.
"""

import hashlib
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from fastcore.parallel import ThreadPoolExecutor
from fasttransform import Pipeline

from ._io import write_atomic
from .audio import AudioTensor, get_audio_files
from .progress import progress_bar
from .signal import audio_item_tfms

__all__ = ["STALE_TMP_SECONDS", "AudioCache", "preprocess_audio_folder", "source_key"]

STALE_TMP_SECONDS = 15 * 60  # a writer renames its temporary file within seconds: older ones belong to dead writers


def source_key(fn: str | os.PathLike) -> str:
    """A file-name-safe key of the audio file `fn` as it is now: its resolved path, size, modification
    time, inode and status-change time.

    A rewrite always changes the status-change time (ctime), which no copy tool can preserve, so a
    source rewritten with the same size and mtime still gets a new key. Every cache of decoded
    audio in specnorm (`AudioCache`, the packed store) keys its entries on it.
    """
    fn = Path(fn).resolve()
    st = fn.stat()
    path_hash = hashlib.sha1(str(fn).encode()).hexdigest()[:16]
    return f"{path_hash}-{st.st_size}-{st.st_mtime_ns}-{st.st_ino}-{st.st_ctime_ns}"


class AudioCache:
    """Read audio files through a cache of decoded, downmixed, resampled float32 waveforms.

    Use it in place of `AudioTensor.create` (``AudioBlock(cache_folder=...)`` and
    ``get_dls(..., cache_folder=...)`` do). Safe with several threads, processes and DataLoader
    workers: each writer writes a temporary file of its own and renames it into place.

    Args:
        folder: where cached arrays go (a sub-folder per setting is made inside).
        sample_rate (int or None): resample to this rate (None keeps each file's rate).
        force_mono (bool): average the channels.

    Attributes:
        hits, misses, rebuilt: entries read from the cache, decoded from their source, and found
            corrupt and decoded again (counted per process).

    Shape:
        `fn` -> `AudioTensor` `[C, T]` at `sample_rate`.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> AudioTensor(torch.zeros(2, 44100), sr=44100).save(d/'a.wav')
        >>> cache = AudioCache(d/'cache', sample_rate=16000)
        >>> cache(d/'a.wav').shape, cache.misses, cache(d/'a.wav').sr, cache.hits
        (torch.Size([1, 16000]), 1, 16000, 1)
    """

    def __init__(self, folder: str | os.PathLike, sample_rate: int | None = 16000, force_mono: bool = True):
        self.sample_rate, self.force_mono = sample_rate, force_mono
        self.folder = Path(folder) / f"sr{sample_rate or 'orig'}_{'mono' if force_mono else 'all'}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        # `AudioBlock`'s own item transforms, less the crop: cached == uncached.
        self.pipeline = Pipeline(audio_item_tfms(sample_rate, force_mono))
        self.hits = self.misses = self.rebuilt = 0

    def _remove_stale_tmp(self):
        now = time.time()
        for tmp in self.folder.glob("*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:  # another process removed or renamed it first
                pass

    def path_for(self, fn: str | os.PathLike) -> Path:
        "The cache file of `fn` as it is now: its name changes whenever `source_key(fn)` does."
        return self.folder / f"{source_key(fn)}.npy"

    def __call__(self, fn: str | os.PathLike):
        return self.read(fn)

    # `cache`, not `self`: fasttransform takes a function whose first argument is named `self` for a method
    # definition, and `AudioBlock` passes the bound `read` as its type transform so that fastai sees the
    # annotation: `dls.test_dl` and `learn.predict` then take `Path`s as well as strings.
    def read(cache, fn: str | os.PathLike):
        "The `AudioTensor` of `fn`: from the cache, or decoded and stored there (a corrupt entry is rebuilt)."
        if not Path(fn).is_file():
            raise FileNotFoundError(f"audio file not found: {fn}")
        cached = cache.path_for(fn)
        if cached.is_file():
            data, problem = cache._load(cached)
            if problem is None:
                cache.hits += 1
                return AudioTensor(data[1:], sr=int(data[0, 0]))
            warnings.warn(f"cache entry {cached} of {fn} is corrupt ({problem}): rebuilding it", stacklevel=2)
            cache.rebuilt += 1
        cache.misses += 1
        audio = cache.pipeline(AudioTensor.create(fn))
        # Row 0 holds the sample rate so one array is one read; float32 holds rates exactly.
        data = np.concatenate([np.full((1, audio.nsamples), audio.sr, np.float32), audio.numpy()])
        cache._write(cached, data, fn)
        return audio

    def _load(self, cached):
        "(array, None) for a sound entry, or (None, what is wrong with it)."
        try:
            data = np.load(cached, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # empty, truncated, zeroed, object dtype, not .npy
            return None, f"{type(e).__name__}: {e}"
        if not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.ndim != 2:
            return None, f"a {data.dtype} array of shape {data.shape}, not float32 [1 + channels, samples]"
        channels = data.shape[0] - 1
        if channels < 1 or data.shape[1] == 0 or (self.force_mono and channels != 1):
            return None, f"shape {data.shape} holds {channels} channels of {data.shape[1]} samples"
        sr = data[0, 0]
        if not (sr > 0 and sr == round(sr) and (data[0] == sr).all()) or (self.sample_rate not in (None, sr)):
            return None, f"its first row is not one sample rate (first value {sr})"
        if not np.isfinite(data[1:]).all():
            return None, "it holds NaN or Inf samples"
        return data, None

    def _write(self, cached, data, fn):
        "Write `data` to `cached` atomically (`write_atomic`); OS errors name the entry and its source `fn`."
        write_atomic(cached, lambda f: np.save(f, data, allow_pickle=False), f"cache entry {cached} of {fn}")

    def __getstate__(self):
        return self.__dict__ | {"hits": 0, "misses": 0, "rebuilt": 0}


def preprocess_audio_folder(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    cache_folder: str | os.PathLike | list[str] | None = None,
    sample_rate: int | None = 16000,
    force_mono: bool = True,
    n_workers: int | None = None,
    progress: bool = True,
    folders: list[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    crop_signal_to: float | None = None,
) -> "AudioCache | Path":
    """Fill the cache for `files` in parallel threads, with a progress bar.

    Two call forms:

    - `preprocess_audio_folder(files, cache_folder, sample_rate=16000, force_mono=True)` fills an
      `AudioCache` in `cache_folder` for the list `files`, and returns the `AudioCache`.
    - fastaudio 1.0.2's `preprocess_audio_folder(path, folders=None, output_dir=None, sample_rate=...,
      force_mono=...)` fills it for every audio file under the folder `path` (only in the sub-folders
      `folders`, when given), in `output_dir` (default: `path`'s sibling `<name>_cached`), and returns
      that folder, to pass on as `AudioBlock(cache_folder=...)` or `get_dls(..., cache_folder=...)` with
      the same `sample_rate` and `force_mono`.

    A file listed twice, or through a symlink, is decoded once. The cache holds full-length clips: crop
    with `AudioBlock(crop_signal_to=...)`, where training crops are drawn at random each epoch
    (`crop_signal_to` here only warns).

    Example:
        >>> cache = preprocess_audio_folder(sorted(path.glob('*.wav')), path/'.cache')  # doctest: +SKIP
        >>> folder = preprocess_audio_folder(path, output_dir=path/'.cache')  # fastaudio's form  # doctest: +SKIP
    """
    folder_form = isinstance(files, (str, os.PathLike))
    if folder_form:
        root = Path(files)
        if not root.is_dir():
            raise NotADirectoryError(
                f"preprocess_audio_folder: {root} is not a folder (give a folder or a list of files)"
            )
        if isinstance(cache_folder, (list, tuple)):  # fastaudio's second positional argument
            folders, cache_folder = cache_folder, None
        cache_folder = Path(output_dir or cache_folder or root.parent / f"{root.name}_cached")
        files = get_audio_files(root, folders=folders)
    elif cache_folder is None:
        raise TypeError("preprocess_audio_folder: give the cache folder (cache_folder=...)")
    if crop_signal_to is not None:
        warnings.warn(
            "preprocess_audio_folder caches full-length clips and ignores crop_signal_to: crop with "
            "AudioBlock(crop_signal_to=...) or get_dls(..., crop_signal_to=...)",
            stacklevel=2,
        )
    unique = list(dict.fromkeys(Path(fn).resolve() for fn in files))  # one writer per file
    missing = [fn for fn in unique if not fn.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} audio files not found: "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
        )
    cache = AudioCache(cache_folder, sample_rate, force_mono)
    n_workers = os.cpu_count() if n_workers is None else n_workers
    with ThreadPoolExecutor(n_workers) as pool:  # fastcore's: n_workers=0 runs in this thread
        fill = pool.map(lambda fn: cache.path_for(fn).is_file() or cache(fn), unique)
        for _ in progress_bar(fill, total=len(unique), label="audio cache", unit="files", show=progress):
            pass
    return cache_folder if folder_form else cache
