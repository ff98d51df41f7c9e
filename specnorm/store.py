"""A packed waveform store: a dataset's decoded waveforms end to end in one array, with an index.

Decoding a file costs a file open, a header parse and a copy; resampling costs a convolution. Both give
the same result every epoch and every run, so `WaveformStore.build` does them once for every file of a
dataset: files are decoded by a thread pool (libsndfile releases the GIL), downmixed, and resampled in
stacks of equal-length clips on the given device (`specnorm.signal.resample`, the filter of `Resample`).
The samples go into one flat array (float32, or float16 for half the disk and memory), the
index holds each clip's offset, channels, length and rate. A batch is then a gather of slices (one
contiguous copy per clip), with no file open and no per-item transform (`WaveformDL` in `specnorm.loader`).

On disk (`folder=`) the store is two files, `<key>.samples` (raw samples, memory-mapped: only the pages
a batch touches are read, and the OS page cache shares them between DataLoader workers) and
`<key>.json` (settings, files, index, CRC-32 of the samples), written last so that its presence marks a
complete store. The key hashes the settings and `source_key` of every file (path, size, mtime, inode,
ctime: the key of `AudioCache`), so a changed source or setting builds a new store (the old one of the
same file list is removed). A store whose sample file has the wrong size or checksum, or whose header does not parse, is
refused with an error naming it. Without `folder` the store lives in memory for the session.

Cost: 4 bytes per sample in float32, 2 in float16. ESC-50 (2000 clips of 5 s) at 16 kHz mono:
2000 * 80000 samples = 640 MB (float32) or 320 MB (float16) on disk, and at most that in the page cache
(memory that the OS reclaims).

float16 keeps 11 significant bits: each stored sample is within `FLOAT16_RTOL` = 2**-11 (4.9e-4) of
its float32 value relative to it, or 6e-8 absolute below float16's normal range (6.1e-5);
`dtype='float32'` stores the float32 samples exactly.
"""

import hashlib
import json
import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .audio import AudioTensor, open_audio_file, wav_layout, wav_truncation
from .cache import source_key
from .signal import resample

__all__ = ["FLOAT16_ATOL", "FLOAT16_RTOL", "StoreError", "WaveformStore"]

STORE_VERSION = 1
# float16's spacing relative to a value (11 significant bits): the rounding error of float16 storage.
FLOAT16_RTOL, FLOAT16_ATOL = 2.0**-11, 6e-8
# Files decoded, then resampled as stacks, per step of the build: at most BUILD_CHUNK files and
# BUILD_SAMPLES samples (8 MB in float32). Bounds the build's memory, and keeps its buffers small
# enough for the allocator to reuse them (larger ones are fresh pages, zeroed by the OS, every time).
BUILD_CHUNK, BUILD_SAMPLES = 64, 1 << 21
# Files of at most SMALL_FILE_SAMPLES samples are read with their header (one open instead of two), up to
# KEEP_SAMPLES samples held at once (256 MB in float32): short clips cost their file opens above all.
SMALL_FILE_SAMPLES, KEEP_SAMPLES = 1 << 16, 1 << 26
DTYPES = ("float16", "float32")


class StoreError(ValueError):
    "A store on disk is truncated, corrupt, or from another version; the message names its files."


def upload(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host integers (numpy, any int or bool dtype) as an int64 tensor on `device`, in one copy that does not wait
    for the device. From pageable memory a host-to-device copy makes the driver synchronize with the stream first
    (CUDA's "API synchronization behavior"): the loader would wait for the training step in flight before making
    the next batch. Page-locked memory (torch's caching host allocator: no new allocation per batch) copies
    asynchronously.
    """
    t = torch.from_numpy(np.ascontiguousarray(host, dtype=np.int64))
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _progress_wanted():
    "A progress bar only where someone watches it: `specnorm.progress.interactive` decides (`SPECNORM_PROGRESS`)."
    from .progress import interactive

    return interactive()


def _crc(arr):
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


class WaveformStore:
    """Decoded (downmixed, resampled) waveforms of a list of files, packed in one array with an index.

    Build it with `WaveformStore.build`; `get_dls` does, and serves batches from it.

    Attributes:
        files (list of str): the files, in the order of the store's rows.
        data (np.ndarray): every clip's samples end to end (channel-major per clip), float16 or float32;
            an `np.memmap` when the store is on disk.
        offsets, channels, nsamples, rates (np.ndarray of int64): per row, where the clip starts in
            `data`, its channel count, its length in samples per channel, and its sample rate.
        path (Path or None): the `.json` file of a store on disk.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> AudioTensor(torch.zeros(2, 44100), sr=44100).save(d/'a.wav')
        >>> store = WaveformStore.build([d/'a.wav'], d/'store', sample_rate=16000, progress=False)
        >>> store[0].shape, store[0].sr, store.nbytes
        (torch.Size([1, 16000]), 16000, 64000)
    """

    def __init__(
        self,
        files: list,
        data: np.ndarray,
        offsets: np.ndarray,
        channels: np.ndarray,
        nsamples: np.ndarray,
        rates: np.ndarray,
        path: Path | None = None,
    ):
        self.files, self.data, self.path = list(files), data, path
        self.offsets, self.channels, self.nsamples, self.rates = offsets, channels, nsamples, rates
        self._copies = {}  # device -> the samples as a tensor there (`samples_on`)

    def samples_on(self, device: str | torch.device) -> torch.Tensor:
        "The samples as one tensor on `device`, copied there once and shared by every loader of this store."
        key = str(torch.device(device))
        if key not in self._copies:
            with warnings.catch_warnings():  # a read-only memory map: torch only reads it, to copy it
                warnings.simplefilter("ignore", UserWarning)
                self._copies[key] = torch.from_numpy(np.asarray(self.data)).to(device)
        return self._copies[key]

    def __len__(self):
        return len(self.files)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __getitem__(self, i):
        "Row `i` as an `AudioTensor` `[C, T]` (float32)."
        c, t, o = int(self.channels[i]), int(self.nsamples[i]), int(self.offsets[i])
        x = torch.from_numpy(np.array(self.data[o : o + c * t], dtype=np.float32).reshape(c, t))
        return AudioTensor(x, sr=int(self.rates[i]))

    def gather(
        self, rows: list[int] | np.ndarray, n: int, starts: list[int] | np.ndarray, pad_mode: str = "zeros"
    ) -> tuple[np.ndarray, np.ndarray]:
        """`n` samples of each of `rows`, from `starts` (negative: that many zeros first), as one array.

        Positions outside a clip are zeros (`pad_mode` `'zeros'` or `'zeros_after'`); with `'repeat'` a
        clip shorter than `n` is repeated from its start instead. All rows must have the same channel count.

        Returns:
            `(batch, lengths)`: `[B, C, n]` in the store's dtype, and the valid (unpadded) samples per row.
        """
        rows = np.asarray(rows)
        channels = self.channels[rows]
        if len(set(channels.tolist())) > 1:
            raise ValueError(
                f"a batch mixes clips with {sorted(set(channels.tolist()))} channels "
                f"({', '.join(self.files[r] for r in rows[:3])} ...): use force_mono=True"
            )
        c = int(channels[0])
        out = np.empty((len(rows), c, n), dtype=self.data.dtype)  # each row written once, padding included
        lengths = np.empty(len(rows), dtype=np.int64)
        for b, (row, start) in enumerate(zip(rows.tolist(), np.asarray(starts, dtype=np.int64).tolist())):
            t, o = int(self.nsamples[row]), int(self.offsets[row])
            clip = self.data[o : o + c * t].reshape(c, t)
            if pad_mode == "repeat" and t < n:
                out[b] = np.tile(clip, (1, -(-n // t)))[:, :n]
                lengths[b] = n
                continue
            src0, src1 = max(start, 0), min(start + n, t)
            dst0, dst1 = src0 - start, src1 - start
            out[b, :, :dst0] = 0
            out[b, :, dst0:dst1] = clip[:, src0:src1]
            out[b, :, dst1:] = 0
            lengths[b] = src1 - src0
        return out, lengths

    def take(
        self,
        samples: torch.Tensor,
        rows: list[int] | np.ndarray,
        n: int,
        starts: list[int] | np.ndarray,
        pad_mode: str = "zeros",
    ) -> tuple[torch.Tensor, np.ndarray]:
        """`gather` with torch ops on `samples`, this store's `data` as a tensor on any device (e.g. a GPU
        copy made once): the batch is made where it will be used, with no host copy and no host read.

        Returns:
            `(batch, lengths)`: a tensor `[B, C, n]` on `samples.device`, and the valid samples (numpy).
        """
        rows, starts = np.asarray(rows), np.asarray(starts, dtype=np.int64)
        channels, t_np = self.channels[rows], self.nsamples[rows]
        if len(set(channels.tolist())) > 1:
            raise ValueError(f"a batch mixes clips with {sorted(set(channels.tolist()))} channels: use force_mono=True")
        c, dev = int(channels[0]), samples.device
        repeat = (t_np < n) if pad_mode == "repeat" else np.zeros(len(rows), dtype=bool)
        lengths = np.where(repeat, n, np.minimum(starts + n, t_np) - np.maximum(starts, 0))

        t, offsets, first, rep = upload(np.stack([t_np, self.offsets[rows], starts, repeat]), dev)
        rep = rep.bool()
        steps = torch.arange(n, device=dev)[None]
        pos = first[:, None] + steps  # [B, n], in samples of each clip
        pos = torch.where(rep[:, None], steps % t[:, None], pos)  # short clips repeat from their start
        valid = (pos >= 0) & (pos < t[:, None])
        pos = torch.minimum(pos.clamp(min=0), t[:, None] - 1)
        idx = offsets[:, None, None] + torch.arange(c, device=dev)[None, :, None] * t[:, None, None] + pos[:, None]
        return torch.where(valid[:, None], samples[idx], 0), lengths

    # -- building ------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        files: list,
        folder: str | os.PathLike | None = None,
        sample_rate: int | None = 16000,
        force_mono: bool = True,
        dtype: str = "float32",
        n_workers: int | None = None,
        progress: bool | None = None,
        device: str | torch.device | None = None,
    ) -> "WaveformStore":
        """The store of `files`: opened from `folder` when a complete one with the same key is there,
        built (and saved there) otherwise.

        Args:
            files: audio files (any format libsndfile reads).
            folder: where the store lives on disk; None keeps it in memory.
            sample_rate (int or None): resample to this rate (None keeps each file's rate).
            force_mono (bool): average the channels.
            dtype (str): `'float32'` (default, exact) or `'float16'` (half the size).
            n_workers (int): decoding threads (default: the CPU count).
            progress (bool): show a progress bar (default: only on a terminal or in a notebook).
            device: where to resample (default: the CPU); a GPU resamples faster.

        Raises:
            StoreError: the store on disk is truncated or corrupt (it names the files; delete them).
            ValueError, FileNotFoundError: a file is missing or cannot be decoded (named).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
        files = [str(f) for f in files]
        if not files:
            raise ValueError("no files to store")
        for fn in files:
            if not Path(fn).is_file():
                raise FileNotFoundError(f"audio file not found: {fn}")
        settings = dict(version=STORE_VERSION, sample_rate=sample_rate, force_mono=bool(force_mono), dtype=dtype)
        key = None  # names the files of a store on disk; a store in memory needs none (a stat per file)
        if folder is not None:
            key = cls.key(files, settings)
            head = Path(folder) / f"{key}.json"
            if head.is_file():
                return cls.open(head)
        return cls._decode_all(files, folder, key, settings, n_workers, progress, device)

    @staticmethod
    def key(files: list[str], settings: dict) -> str:
        "`<settings and file list hash>-<sources hash>`: the second half changes when any source file does."
        files_hash = hashlib.sha1(json.dumps([settings, files]).encode()).hexdigest()[:16]
        sources_hash = hashlib.sha1("\n".join(source_key(f) for f in files).encode()).hexdigest()[:16]
        return f"{files_hash}-{sources_hash}"

    @staticmethod
    def _probe(fn, budget):
        """`((rate, channels, frames, pcm16), samples, offset)` of `fn`; `pcm16`: 16-bit integer samples.

        `samples` (`[frames, channels]`, int16 for 16-bit files, else float32) is read in the same open as
        the header when the file has at most `SMALL_FILE_SAMPLES` samples and `budget` (a one-element
        list of samples still allowed, shared by the threads) covers them; None otherwise (read later).
        `offset`: where a 16-bit PCM WAV file keeps its samples, which are then read as they are, without
        libsndfile (its per-file cost is several times that of the read itself); None for other files.
        """

        def keep(size):
            if 0 < size <= SMALL_FILE_SAMPLES and budget[0] >= size:
                budget[0] -= size  # racy between threads by at most one file each: a soft bound
                return True
            return False

        with open_audio_file(fn) as f:
            layout = wav_layout(f)
            if layout is not None and layout.pcm16 and 0 < layout.size < 0xFFFFFFFF:
                missing = wav_truncation(fn, layout)
                if missing:
                    raise ValueError(missing)
                frames, samples = layout.size // layout.block, None
                if frames == 0:
                    raise ValueError(f"audio file {fn} has no samples")
                if keep(frames * layout.channels):
                    f.seek(layout.offset)
                    samples = np.empty((frames, layout.channels), dtype=np.int16)
                    f.readinto(samples)  # the whole data chunk is there (checked above)
                return (layout.rate, layout.channels, frames, 1), samples, layout.offset
        try:
            with sf.SoundFile(fn) as f:
                head = (f.samplerate, f.channels, f.frames, int(f.subtype == "PCM_16"))
                samples = None
                if keep(f.frames * f.channels):
                    samples = f.read(dtype="int16" if head[3] else "float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise ValueError(f"cannot decode audio file {fn}: {e}") from e
        if head[2] == 0:
            raise ValueError(f"audio file {fn} has no samples")
        if samples is not None and samples.shape[0] != head[2]:
            raise ValueError(f"audio file {fn} is truncated: {samples.shape[0]} of the {head[2]} frames in its header")
        return head, samples, None

    @staticmethod
    def _read_into(files, out, read, offsets):
        """Decode each of `files` into its row of `out` `[files, frames, channels]`: float32 as
        `AudioTensor.create` reads it, or int16 (16-bit files: a copy, no conversion in libsndfile).
        `read` holds the samples of files read already (`_probe`), or None for the others; `offsets` where
        16-bit PCM WAV files keep their samples (read as they are), or None."""
        for fn, rows, samples, offset in zip(files, out, read, offsets):
            if samples is not None:
                rows[:] = samples
                continue
            if offset is not None:
                with open_audio_file(fn) as f:
                    f.seek(offset)
                    got = f.readinto(rows) // rows.itemsize // rows.shape[1]
            else:
                try:
                    got = sf.read(fn, out=rows, dtype=out.dtype.name, always_2d=True)[0].shape[0]
                except (sf.LibsndfileError, RuntimeError, TypeError) as e:
                    raise ValueError(f"cannot decode audio file {fn}: {e}") from e
            if got != rows.shape[0]:
                raise ValueError(f"audio file {fn} is truncated: {got} of the {rows.shape[0]} frames its header gives")

    @classmethod
    def _decode_all(cls, files, folder, key, settings, n_workers, progress, device):
        sample_rate, force_mono, dtype = settings["sample_rate"], settings["force_mono"], settings["dtype"]
        n_workers = os.cpu_count() if n_workers is None else n_workers
        device = torch.device("cpu" if device is None else device)
        with ThreadPoolExecutor(max(1, n_workers)) as pool:
            budget = [KEEP_SAMPLES]
            # One task per thread, not per file: a short clip's probe costs about as much as a task's handoff.
            parts = np.array_split(np.arange(len(files)), min(len(files), max(1, n_workers)))
            probed = [
                head
                for part in pool.map(lambda part: [cls._probe(files[i], budget) for i in part], parts)
                for head in part
            ]
            src = np.array([head for head, _, _ in probed], dtype=np.int64)  # rate, channels, frames, pcm16
            early = [samples for _, samples, _ in probed]
            wav_offsets = [offset for _, _, offset in probed]
            del probed
            rates = src[:, 0] if sample_rate is None else np.full(len(files), sample_rate, dtype=np.int64)
            channels = np.ones(len(files), dtype=np.int64) if force_mono else src[:, 1].copy()
            # the output length of `resample`: ceil(frames * new / orig), in integers
            nsamples = -(-src[:, 2] * rates // src[:, 0])
            sizes = channels * nsamples
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            total = int(sizes.sum())
            if folder is not None:
                folder = Path(folder)
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f"{key}.samples.{os.getpid()}.tmp"
                data = np.memmap(tmp, dtype=dtype, mode="w+", shape=(total,))
            else:
                data = np.empty(total, dtype=dtype)
            # Files with the same rate, channels, length and sample type decode into one buffer and resample
            # as one stack; each chunk's files are split among the threads, and the next chunk decodes
            # while this one resamples.
            groups = {}
            for row, shape in enumerate(map(tuple, src)):
                groups.setdefault(shape, []).append(row)
            step = {shape: max(1, min(BUILD_CHUNK, BUILD_SAMPLES // (shape[1] * shape[2]))) for shape in groups}
            chunks = [
                (shape, rows[i : i + step[shape]])
                for shape, rows in groups.items()
                for i in range(0, len(rows), step[shape])
            ]

            def decode(chunk):
                (_, n_ch, frames, pcm16), rows = chunk
                buf = np.empty((len(rows), frames, n_ch), dtype=np.int16 if pcm16 else np.float32)
                parts = np.array_split(np.arange(len(rows)), min(len(rows), max(1, n_workers)))
                jobs = [
                    pool.submit(
                        cls._read_into,
                        [files[rows[i]] for i in p],
                        buf[p[0] : p[-1] + 1],
                        [early[rows[i]] for i in p],
                        [wav_offsets[rows[i]] for i in p],
                    )
                    for p in parts
                ]
                for row in rows:  # the early samples are copied once the jobs are done; drop them then
                    early[row] = None
                return buf, jobs

            steps = range(len(chunks))
            if progress if progress is not None else _progress_wanted():
                from fastprogress.fastprogress import progress_bar

                steps = progress_bar(steps)
            pending = decode(chunks[0])
            for k in steps:
                ((sr, n_ch, _, pcm16), rows), (buf, jobs) = chunks[k], pending
                for job in jobs:
                    job.result()
                pending = decode(chunks[k + 1]) if k + 1 < len(chunks) else None
                if pcm16:  # libsndfile's float32 of a 16-bit sample is sample * 2**-15: exact, as here
                    x = torch.mul(torch.from_numpy(buf), 2.0**-15, out=torch.empty(buf.shape))
                else:
                    bad = ~np.isfinite(buf).all(axis=(1, 2))
                    if bad.any():
                        raise ValueError(f"audio file {files[rows[int(bad.argmax())]]} contains NaN or Inf samples")
                    x = torch.from_numpy(buf)
                x = x.transpose(1, 2)  # [B, C, T]
                if force_mono and n_ch > 1:
                    x = x.mean(1, keepdim=True)
                y = resample(x.to(device), sr, int(rates[rows[0]])).cpu().numpy()
                if data.dtype == np.float16:
                    peaks = np.abs(y).reshape(len(rows), -1).max(1)
                    if peaks.max() > np.finfo(np.float16).max:
                        fn = files[rows[int(peaks.argmax())]]
                        raise ValueError(f"audio file {fn} has samples beyond float16's range: use dtype='float32'")
                for row, clip in zip(rows, y):
                    data[offsets[row] : offsets[row] + sizes[row]] = clip.ravel()
        store = cls(files, data, offsets, channels, nsamples, rates)
        if folder is not None:
            store._save(folder, key, settings, tmp)
        return store

    # -- on disk ---------------------------------------------------------------------------------------

    def _save(self, folder, key, settings, tmp):
        self.data.flush() if hasattr(self.data, "flush") else None
        samples = folder / f"{key}.samples"
        os.replace(tmp, samples)
        index = np.stack([self.offsets, self.channels, self.nsamples, self.rates], 1)
        head = dict(
            settings,
            files=self.files,
            index=index.tolist(),
            nsamples_total=int(self.data.size),
            samples_crc32=_crc(self.data),
        )
        files_hash = key.split("-")[0]
        for old in folder.glob(f"{files_hash}-*"):  # stores of the same files and settings, now stale
            if not old.name.startswith(key):
                old.unlink(missing_ok=True)
        path = folder / f"{key}.json"
        tmp_head = path.with_suffix(f".{os.getpid()}.tmp")
        tmp_head.write_text(json.dumps(head))
        os.replace(tmp_head, path)  # last: a store is complete once its .json exists
        self.path = path
        self.data = np.memmap(samples, dtype=settings["dtype"], mode="r", shape=(self.data.size,))

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "WaveformStore":
        """Open the store whose header is `path` (`<key>.json`), memory-mapping its samples.

        With `verify`, the samples' CRC-32 is checked (one sequential read, which also fills the
        page cache the first epoch reads from).
        """
        path = Path(path)
        samples = path.with_suffix(".samples")
        try:
            head = json.loads(path.read_text())
            index = np.asarray(head["index"], dtype=np.int64).reshape(len(head["files"]), 4)
            dtype, total = np.dtype(head["dtype"]), int(head["nsamples_total"])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"waveform store {path} is corrupt ({e}): delete it and {samples.name}") from e
        if head.get("version") != STORE_VERSION:
            raise StoreError(f"waveform store {path} has version {head.get('version')}, not {STORE_VERSION}")
        size = samples.stat().st_size if samples.is_file() else None
        if size != total * dtype.itemsize:
            raise StoreError(
                f"waveform store {samples} is truncated or missing: {size} bytes, expected "
                f"{total * dtype.itemsize}; delete it and {path.name}"
            )
        data = np.memmap(samples, dtype=dtype, mode="r", shape=(total,)) if total else np.empty(0, dtype)
        if verify and _crc(data) != head["samples_crc32"]:
            raise StoreError(f"waveform store {samples} is corrupt (checksum mismatch): delete it and {path.name}")
        offsets, channels, nsamples, rates = (index[:, k].copy() for k in range(4))
        return cls(head["files"], data, offsets, channels, nsamples, rates, path=path)

    def __getstate__(self):
        # A memory-mapped store travels as its path (a worker reopens it), not as its samples;
        # device copies stay where they are.
        state = self.__dict__ | {"_copies": {}}
        return state if self.path is None else state | {"data": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.data is None:
            self.data = type(self).open(self.path, verify=False).data
