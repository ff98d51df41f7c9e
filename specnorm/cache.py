"""A disk cache of decoded, downmixed and resampled waveforms (fastaudio's `preprocess_audio_folder`).

Decoding and resampling a 44.1 kHz file costs more than everything else an audio item goes through,
and it gives the same result every epoch and every run. `AudioCache` does it once per file and
stores the float32 samples as `.npy` (read back with `allow_pickle=False`), so later epochs read
ready arrays. A cached file's name carries `source_key` of its source (path, size, mtime, inode, ctime), and the folder
it lives in carries the settings, so a changed source file or a changed setting is a cache miss,
never a stale hit. The cached waveform is exactly what `audio_item_tfms` would compute, so batches
with and without the cache are identical.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
from fastcore.parallel import ThreadPoolExecutor
from fasttransform import Pipeline

from .audio import AudioTensor
from .progress import progress_bar
from .signal import audio_item_tfms

__all__ = ["AudioCache", "preprocess_audio_folder", "source_key"]


def source_key(fn):
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
    ``get_dls(..., cache_folder=...)`` do). Safe with several DataLoader workers: a file is
    written under a temporary name and renamed into place.

    Args:
        folder: where cached arrays go (a sub-folder per setting is made inside).
        sample_rate (int or None): resample to this rate (None keeps each file's rate).
        force_mono (bool): average the channels.

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

    def __init__(self, folder, sample_rate=16000, force_mono=True):
        self.sample_rate, self.force_mono = sample_rate, force_mono
        self.folder = Path(folder) / f"sr{sample_rate or 'orig'}_{'mono' if force_mono else 'all'}"
        self.folder.mkdir(parents=True, exist_ok=True)
        # `AudioBlock`'s own item transforms, less the crop: cached == uncached.
        self.pipeline = Pipeline(audio_item_tfms(sample_rate, force_mono))
        self.hits = self.misses = 0

    def path_for(self, fn):
        "The cache file of `fn` as it is now: its name changes whenever `source_key(fn)` does."
        return self.folder / f"{source_key(fn)}.npy"

    def __call__(self, fn):
        if not Path(fn).is_file():
            raise FileNotFoundError(f"audio file not found: {fn}")
        cached = self.path_for(fn)
        if cached.is_file():
            self.hits += 1
            data = np.load(cached, allow_pickle=False)
            return AudioTensor(data[1:], sr=int(data[0, 0]))
        self.misses += 1
        audio = self.pipeline(AudioTensor.create(fn))
        # Row 0 holds the sample rate so one array is one read; float32 holds rates exactly.
        data = np.concatenate([np.full((1, audio.nsamples), audio.sr, np.float32), audio.numpy()])
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, data, allow_pickle=False)
        os.replace(tmp, cached)
        return audio

    def __getstate__(self):
        return self.__dict__ | {"hits": 0, "misses": 0}


def preprocess_audio_folder(files, cache_folder, sample_rate=16000, force_mono=True, n_workers=None, progress=True):
    """Fill the cache for `files` in parallel threads, with a progress bar; returns the `AudioCache`.

    Example:
        >>> cache = preprocess_audio_folder(sorted(path.glob('*.wav')), path/'.cache')  # doctest: +SKIP
    """
    cache = AudioCache(cache_folder, sample_rate, force_mono)
    n_workers = os.cpu_count() if n_workers is None else n_workers
    files = list(files)
    with ThreadPoolExecutor(n_workers) as pool:  # fastcore's: n_workers=0 runs in this thread
        fill = pool.map(lambda fn: cache.path_for(fn).is_file() or cache(fn), files)
        for _ in progress_bar(fill, total=len(files), label="audio cache", unit="files", show=progress):
            pass
    return cache
