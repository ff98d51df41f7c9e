"""Typed audio tensors: waveforms (`AudioTensor`) and spectrograms (`AudioSpectrogram`).

The public names and their contracts follow fastaudio 1.0.2 (fastaudio/fastaudio), rebuilt on
fastai 2.8's `TensorBase`: the sample rate and the spectrogram settings travel as tensor metadata,
through torch operations, collation and batch transforms, and through `clone()` (which fastai 2.8's
`TensorBase.clone` drops), `.to()`, pickling (DataLoader workers) and `torch.save`/`torch.load` (the
two classes are registered as safe for `torch.load`'s default `weights_only=True`). Files are read and
written with soundfile (libsndfile), because torchaudio >= 2.9 needs FFmpeg for its own `load`/`save`.
"""

import mimetypes
import os
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
import torch
from fastai.data.transforms import get_files
from fastai.torch_core import TensorBase, TensorImageBase
from fastai.vision.data import get_grid
from fastcore.foundation import L
from plum import dispatch

__all__ = [
    "AudioSpectrogram",
    "AudioTensor",
    "audio_extensions",
    "get_audio_files",
    "show_audio_signal",
    "show_batch",
    "show_spectrogram",
]

# What `get_audio_files` looks for: every extension the MIME table calls audio, common formats some tables
# lack, and every format this libsndfile reads (RAW needs its settings given, so it is left out).
audio_extensions = tuple(
    sorted(
        {ext.lower() for ext, kind in mimetypes.types_map.items() if kind.startswith("audio/")}
        | {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64"}
        | {f".{k.lower()}" for k in sf.available_formats() if k != "RAW"}
    )
)


def get_audio_files(path: str | os.PathLike, recurse: bool = True, folders: list[str] | None = None) -> L:
    """The audio files (by extension, `audio_extensions`) under `path`, recursively, only in `folders` if given.

    Example:
        >>> get_audio_files(path)   # doctest: +SKIP
        (#2000) [Path('ESC-50-master/audio/1-100032-A-0.wav'),...]
    """
    return get_files(path, extensions=audio_extensions, recurse=recurse, folders=folders)


_READ_OPTIONS = {"frame_offset": "start", "num_frames": "frames", "start": "start", "stop": "stop", "frames": "frames"}


def _read_options(fn, kwargs):
    "`AudioTensor.create`'s keywords as `soundfile.read` options (torchaudio's names mapped to soundfile's)."
    unknown = sorted(set(kwargs) - set(_READ_OPTIONS))
    if unknown:
        raise TypeError(
            f"AudioTensor.create({fn}) got unknown options {unknown}: it takes frame_offset and num_frames "
            "(torchaudio's names, as in fastaudio), or soundfile's start, stop and frames"
        )
    options = {}
    for k, v in kwargs.items():
        name = _READ_OPTIONS[k]
        if name in options:
            raise TypeError(f"AudioTensor.create({fn}): give {name!r} once (as {k!r} or its other name)")
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (-1 if name == "frames" else 0):
            raise ValueError(
                f"AudioTensor.create({fn}): {k} must be an int >= {-1 if name == 'frames' else 0}, got {v!r}"
            )
        options[name] = int(v)
    return options


class WavLayout(NamedTuple):
    """Where a WAV file keeps its samples, from its RIFF header (`wav_layout`).

    `pcm16`: 16-bit little-endian integer samples (format 1, or WAVE_FORMAT_EXTENSIBLE with the PCM
    subformat), which are the file's bytes as they are: `WaveformStore` reads them without a decoder.
    `size` is the data chunk's declared size in bytes (0 and 2**32 - 1 mean 'unknown': streamed WAV,
    RF64), `held` the bytes the file holds from `offset`, `block` the bytes of one frame (0: no fmt chunk).
    """

    pcm16: bool
    rate: int
    channels: int
    block: int
    offset: int
    size: int
    held: int


def open_audio_file(fn: str | os.PathLike) -> BinaryIO:
    "`open(fn, 'rb')`, whose errors name the file as an audio file ('cannot read audio file ...: Permission denied')."
    try:
        return open(fn, "rb")
    except OSError as e:
        raise type(e)(e.errno, f"cannot read audio file {fn}: {e.strerror}") from e


def wav_layout(f: BinaryIO) -> WavLayout | None:
    """The `WavLayout` of the open binary file `f` (read from its start), or None when it is not a RIFF/RIFX
    WAVE file with a data chunk."""
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order, total = "<" if head[:4] == b"RIFF" else ">", os.fstat(f.fileno()).st_size
    fmt = (0, 0, 0, 0, 0)  # format, channels, rate, block, bits
    while len(chunk := f.read(8)) == 8:
        cid, n = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
        if cid == b"data":
            tag, channels, rate, block, bits = fmt
            pcm16 = order == "<" and tag == 1 and bits == 16 and block == 2 * channels > 0
            return WavLayout(pcm16, rate, channels, block, f.tell(), n, total - f.tell())
        if cid == b"fmt " and n >= 14:
            body = f.read(min(n, 26))
            tag, channels, rate, _, block = struct.unpack(order + "HHIIH", body[:14])
            bits = struct.unpack(order + "H", body[14:16])[0] if len(body) >= 16 else 0
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the format is the subformat's
                tag = struct.unpack(order + "H", body[24:26])[0]
            fmt = (tag, channels, rate, block, bits)
            f.seek(n - len(body) + (n & 1), 1)
        else:
            f.seek(n + (n & 1), 1)
    return None


def wav_truncation(fn: str | os.PathLike, layout: WavLayout | None) -> str | None:
    "What is missing from the WAV file `fn` of `layout` ('it holds 10 of the 20 samples...'), or None when complete."
    if layout is None or not 0 < layout.size < 0xFFFFFFFF or layout.held >= layout.size:
        return None
    if layout.block:
        return (
            f"audio file {fn} is truncated: it holds {layout.held // layout.block} of the "
            f"{layout.size // layout.block} samples its header declares"
        )
    return f"audio file {fn} is truncated: it holds {layout.held} of the {layout.size} bytes its header declares"


def _check_wav_length(fn):
    """Raise if the WAV file `fn` holds fewer bytes than its data chunk's header declares.

    libsndfile reads what there is without an error (half of a cut file), so the header is read here.
    Other formats are left to the decoder (a cut FLAC file fails to decode). Data sizes of 0 and 2**32 - 1
    mean 'unknown' (streamed WAV, RF64) and are not checked.
    """
    with open_audio_file(fn) as f:
        missing = wav_truncation(fn, wav_layout(f))
    if missing:
        raise ValueError(missing)


class _KeepsMeta:
    "Mixin: `clone()` keeps the metadata (`sr`, spectrogram settings), as every other torch op does."

    def clone(self, *, memory_format=torch.preserve_format):
        out = super().clone(memory_format=memory_format)
        out.set_meta(self, as_copy=True)
        return out


class AudioTensor(_KeepsMeta, TensorBase):
    """A waveform `[channels, samples]` (or a batch `[batch, channels, samples]`) that knows its sample rate.

    Args:
        x: samples; a 1-D signal becomes one channel.
        sr (int): sample rate in Hz.

    Shape:
        `[C, T]` for an item, `[B, C, T]` for a batch (collation keeps the type and `sr`).

    Example:
        >>> import torch
        >>> a = AudioTensor(torch.zeros(16000), sr=16000)
        >>> a.shape, a.sr, a.duration
        (torch.Size([1, 16000]), 16000, 1.0)
    """

    def __new__(cls, x, sr=None, **kwargs):
        x = torch.as_tensor(x)
        if x.ndim == 1:
            x = x[None]
        return super().__new__(cls, x, sr=sr, **kwargs)

    @classmethod
    def create(cls, fn: str | os.PathLike, **kwargs) -> "AudioTensor":
        """Read `fn` (any format libsndfile reads: WAV, FLAC, OGG, ...) as float32 `[channels, samples]`.

        Args:
            fn (str or os.PathLike): the file.
            frame_offset, num_frames (int): read `num_frames` samples (-1: to the end) from sample
                `frame_offset`: fastaudio 1.0.2's `torchaudio.load` options. soundfile's `start`, `stop`
                and `frames` work too. Any other keyword is a TypeError.

        Raises a clear error naming the file when it is missing, unreadable, not audio, empty, holds
        NaN/Inf samples, or is a WAV file shorter than its header declares (a cut copy or download).
        """
        fn = Path(fn)
        if not fn.is_file():
            raise FileNotFoundError(f"audio file not found: {fn}")
        options = _read_options(fn, kwargs)
        _check_wav_length(fn)  # also opens the file: an unreadable one fails here, naming it
        try:
            data, sr = sf.read(fn, dtype="float32", always_2d=True, **options)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise ValueError(f"cannot decode audio file {fn} (not audio, or corrupt): {e}") from e
        if data.shape[0] == 0:
            where = f" from sample {options.get('start', 0)}" if options else ""
            raise ValueError(f"audio file {fn} has no samples{where}")
        # numpy's check is 20x faster than torch.isfinite on a TensorBase subclass (profiled).
        if not np.isfinite(data).all():
            raise ValueError(f"audio file {fn} contains {int((~np.isfinite(data)).sum())} NaN or Inf samples")
        return cls(torch.from_numpy(np.ascontiguousarray(data.T)), sr=sr)

    @property
    def nsamples(self) -> int:
        return self.shape[-1]

    @property
    def nchannels(self) -> int:
        return self.shape[-2]

    @property
    def duration(self) -> float:
        return self.nsamples / self.sr

    def save(self, fn: str | os.PathLike) -> None:
        "Write the item to `fn`; the format follows the extension (`.wav`, `.flac`, `.ogg`)."
        sf.write(fn, self.detach().cpu().numpy().T, self.sr)

    def hear(self) -> None:
        "Show an audio player (in a notebook)."
        from IPython.display import Audio, display

        display(Audio(self.detach().cpu().numpy(), rate=self.sr))

    def show(
        self,
        ctx: plt.Axes | None = None,
        title: str | None = None,
        figsize: tuple = (6, 2),
        hear: bool = False,
        **kwargs,
    ) -> plt.Axes:
        "Plot the waveform, one line per channel, against time in seconds; `hear=True` adds an audio player."
        if hear:
            self.hear()
        ax = ctx if ctx is not None else plt.subplots(figsize=figsize)[1]
        data = self.detach().cpu().as_subclass(torch.Tensor).numpy()
        t = np.arange(data.shape[-1]) / self.sr
        for i, channel in enumerate(data.reshape(-1, data.shape[-1])):
            ax.plot(t, channel, lw=0.5, label=f"ch {i}", **kwargs)
        ax.set_xlim(0, t[-1] if len(t) else 1)
        ax.set_xlabel("time (s)")
        if title is not None:
            ax.set_title(str(title))
        if ctx is None:
            ax.figure.tight_layout()
        return ax


def _mel_to_hz(mel):
    # HTK mel scale, torchaudio's default (mel_scale='htk').
    return 700.0 * (10 ** (np.asarray(mel) / 2595.0) - 1.0)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


class AudioSpectrogram(_KeepsMeta, TensorImageBase):
    """A spectrogram `[channels, freq, frames]` (or a batch `[batch, channels, freq, frames]`).

    It subclasses `TensorImageBase`, so image-style batch transforms (and `SpecNormalize`) apply.
    The settings that made it (`sr`, `n_fft`, `hop_length`, `win_length`, `mel`, `n_mels`,
    `f_min`, `f_max`, `to_db`, ...) travel as metadata; `AudioToSpec` sets them.

    Shape:
        `[C, F, T]` for an item, `[B, C, F, T]` for a batch.

    Example:
        >>> import torch
        >>> s = AudioSpectrogram(torch.zeros(1, 201, 401), sr=16000, hop_length=200, to_db=True, mel=False)
        >>> s.height, s.width, s.duration
        (201, 401, 5.0)
    """

    @classmethod
    def create(cls, x: torch.Tensor, settings: dict | None = None) -> "AudioSpectrogram":
        "An `AudioSpectrogram` of the tensor `x` with the metadata in the dict `settings` (fastaudio's form)."
        return cls(x, **(settings or {}))

    @property
    def settings(self) -> dict:
        "The metadata as a dict (`sr`, `n_fft`, `hop_length`, `mel`, `to_db`, ...): what made this spectrogram."
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def height(self) -> int:
        return self.shape[-2]

    @property
    def width(self) -> int:
        return self.shape[-1]

    @property
    def nchannels(self) -> int:
        return self.shape[-3]

    @property
    def duration(self) -> float:
        "Length in seconds of the signal the frames cover (centred frames: `(width - 1) * hop / sr`)."
        return (self.width - 1) * self.hop_length / self.sr

    def frequencies(self) -> np.ndarray | None:
        "Centre frequency in Hz of each row (mel bins on the mel scale, linear bins otherwise)."
        if getattr(self, "mfcc", False):
            return None
        if getattr(self, "mel", False):
            f_max = self.f_max if self.f_max is not None else self.sr / 2
            mels = np.linspace(_hz_to_mel(self.f_min), _hz_to_mel(f_max), self.height + 2)[1:-1]
            return _mel_to_hz(mels)
        return np.linspace(0, self.sr / 2, self.height)

    def show(
        self,
        ctx: plt.Axes | None = None,
        title: str | None = None,
        colorbar: bool = True,
        figsize: tuple = (6, 3),
        cmap: str = "magma",
        **kwargs,
    ) -> plt.Axes:
        "Draw the first channel: time in seconds, frequency in Hz (mel-spaced rows when `mel`), a colorbar."
        ax = ctx if ctx is not None else plt.subplots(figsize=figsize)[1]
        img = self.detach().cpu().as_subclass(torch.Tensor)
        img = img.reshape(-1, self.height, self.width)[0].numpy()
        duration = self.duration if getattr(self, "sr", None) and getattr(self, "hop_length", None) else self.width
        freqs = self.frequencies() if getattr(self, "sr", None) else None
        # Rows are drawn by index so mel rows are evenly spaced; ticks carry their frequency in Hz.
        im = ax.imshow(img, origin="lower", aspect="auto", cmap=cmap, extent=(0, duration, 0, self.height), **kwargs)
        ax.set_xlabel("time (s)")
        if freqs is None:
            ax.set_ylabel("coefficient")
        else:
            ticks = np.linspace(0, self.height - 1, 5).round().astype(int)
            ax.set_yticks(ticks + 0.5)
            ax.set_yticklabels([f"{freqs[t]:.0f}" for t in ticks])
            ax.set_ylabel("mel frequency (Hz)" if getattr(self, "mel", False) else "frequency (Hz)")
        if colorbar:
            unit = "dB" if getattr(self, "to_db", False) else "value"
            centred = getattr(self, "centred", False)  # mean removed, units kept (SlidingSpecNorm without norm_vars)
            label = (
                "standardized" if getattr(self, "standardized", False) else f"{unit}, mean removed" if centred else unit
            )
            ax.figure.colorbar(im, ax=ax, label=label)
        if title is not None:
            ax.set_title(str(title))
        if ctx is None:
            ax.figure.tight_layout()
        return ax


def show_audio_signal(
    ai: AudioTensor, ctx: plt.Axes | None = None, ax: plt.Axes | None = None, title: str | None = None, **kwargs
) -> plt.Axes:
    "Plot the waveform `ai` on `ax` (or `ctx`, or a new figure): `AudioTensor.show` as a function (fastaudio's name)."
    return ai.show(ctx=ax if ax is not None else ctx, title=title or None, **kwargs)


def show_spectrogram(
    sg: AudioSpectrogram, title: str | None = None, ax: plt.Axes | None = None, ctx: plt.Axes | None = None, **kwargs
) -> plt.Axes:
    "Draw the spectrogram `sg` on `ax` (or `ctx`, or a new figure): `AudioSpectrogram.show` as a function."
    return sg.show(ctx=ax if ax is not None else ctx, title=title or None, **kwargs)


# torch.load defaults to weights_only=True since torch 2.6: allow the two classes (their state is the
# metadata dict of plain values), so saved tensors load with their sample rate and settings.
torch.serialization.add_safe_globals([AudioTensor, AudioSpectrogram])


@dispatch
def show_batch(
    x: AudioTensor | AudioSpectrogram,
    y,
    samples,
    ctxs=None,
    max_n=6,
    nrows=None,
    ncols=None,
    figsize=None,
    **kwargs,
):
    "A grid of waveforms or spectrograms (each with its colorbar), titled with their labels."
    if ctxs is None:
        ctxs = get_grid(min(len(samples), max_n), nrows=nrows, ncols=ncols, figsize=figsize)
    for (x, *ys), ctx, _ in zip(samples, ctxs, range(max_n)):
        x.show(ctx=ctx, title=ys[0] if ys else None, **kwargs)
    ctxs[0].figure.tight_layout()
    return ctxs
