"""Typed audio tensors: waveforms (`AudioTensor`) and spectrograms (`AudioSpectrogram`).

The public names and their contracts follow fastaudio 1.0.2 (fastaudio/fastaudio), rebuilt on
fastai 2.8's `TensorBase`: the sample rate and the spectrogram settings travel as tensor metadata,
through torch operations, collation and batch transforms. Files are read and written with
soundfile (libsndfile), because torchaudio >= 2.9 needs FFmpeg for its own `load`/`save`.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
import torch
from fastai.torch_core import TensorBase, TensorImageBase
from fastai.vision.data import get_grid
from plum import dispatch

__all__ = ["AudioSpectrogram", "AudioTensor", "show_batch"]


class AudioTensor(TensorBase):
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
    def create(cls, fn, **kwargs):
        "Read `fn` (any format libsndfile reads: WAV, FLAC, OGG, ...) as float32 `[channels, samples]`."
        fn = Path(fn)
        if not fn.is_file():
            raise FileNotFoundError(f"audio file not found: {fn}")
        try:
            data, sr = sf.read(fn, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise ValueError(f"cannot decode audio file {fn}: {e}") from e
        if data.shape[0] == 0:
            raise ValueError(f"audio file {fn} has no samples")
        # numpy's check is 20x faster than torch.isfinite on a TensorBase subclass (profiled).
        if not np.isfinite(data).all():
            raise ValueError(f"audio file {fn} contains {int((~np.isfinite(data)).sum())} NaN or Inf samples")
        return cls(torch.from_numpy(np.ascontiguousarray(data.T)), sr=sr, **kwargs)

    @property
    def nsamples(self):
        return self.shape[-1]

    @property
    def nchannels(self):
        return self.shape[-2]

    @property
    def duration(self):
        return self.nsamples / self.sr

    def save(self, fn):
        "Write the item to `fn`; the format follows the extension (`.wav`, `.flac`, `.ogg`)."
        sf.write(fn, self.detach().cpu().numpy().T, self.sr)

    def hear(self):
        "Show an audio player (in a notebook)."
        from IPython.display import Audio, display

        display(Audio(self.detach().cpu().numpy(), rate=self.sr))

    def show(self, ctx=None, title=None, figsize=(6, 2), **kwargs):
        "Plot the waveform, one line per channel, against time in seconds."
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


class AudioSpectrogram(TensorImageBase):
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

    @property
    def height(self):
        return self.shape[-2]

    @property
    def width(self):
        return self.shape[-1]

    @property
    def nchannels(self):
        return self.shape[-3]

    @property
    def duration(self):
        "Length in seconds of the signal the frames cover (centred frames: `(width - 1) * hop / sr`)."
        return (self.width - 1) * self.hop_length / self.sr

    def frequencies(self):
        "Centre frequency in Hz of each row (mel bins on the mel scale, linear bins otherwise)."
        if getattr(self, "mfcc", False):
            return None
        if getattr(self, "mel", False):
            f_max = self.f_max if self.f_max is not None else self.sr / 2
            mels = np.linspace(_hz_to_mel(self.f_min), _hz_to_mel(f_max), self.height + 2)[1:-1]
            return _mel_to_hz(mels)
        return np.linspace(0, self.sr / 2, self.height)

    def show(self, ctx=None, title=None, colorbar=True, figsize=(6, 3), cmap="magma", **kwargs):
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
