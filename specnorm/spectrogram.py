"""Batch spectrogram transforms: `AudioToSpec` (linear or mel, optionally in dB) and `AudioToMFCC`.

They wrap torchaudio's `Spectrogram`, `MelSpectrogram`, `AmplitudeToDB` and `MFCC`, and work on an
item `[C, T]` or, as fastai batch transforms, on a batch `[B, C, T]` on whatever device it is on:
computing spectrograms on GPU batches instead of precomputing images is the point (fastaudio's design).
Neither reads a value on the host: spectrograms with NaN or Inf (e.g. from samples of 1e20, whose
power overflows float32) are counted on the device and reported by `check()` (`FiniteCheck`).
"""

import copy
import inspect
import warnings
from dataclasses import fields, is_dataclass

import torch
import torch.nn as nn
import torchaudio.transforms as T
from fastai.data.transforms import DisplayedTransform

from .audio import AudioSpectrogram, AudioTensor
from .functional import FiniteCheck, has_padding, padding_of, valid_mask

__all__ = ["AudioToMFCC", "AudioToSpec", "SpectrogramTransformer", "frame_lengths", "get_usable_kwargs"]


def get_usable_kwargs(func, kwargs, exclude=None):
    """`func`'s parameters with their defaults, updated with the entries of `kwargs` that `func` takes.

    Parameters in `exclude` are left out; a parameter without a default maps to `inspect.Parameter.empty`.

    Example:
        >>> def f(a=1, b=2): ...
        >>> get_usable_kwargs(f, {'b': 5, 'z': 0})
        {'a': 1, 'b': 5}
    """
    exclude = set(exclude or ())
    params = {k: p.default for k, p in inspect.signature(func).parameters.items() if k not in exclude}
    return params | {k: v for k, v in kwargs.items() if k in params}


# Arguments of the dB conversion; fastaudio's AudioToSpec routed them to `AmplitudeToDB`.
_DB_ARGS = {"stype", "top_db"}


def frame_lengths(lengths, pad_before, hop_length, n_frames, centre=0):
    """The valid frames `(lengths, pad_before)` of a spectrogram of padded signals, from the valid samples.

    The rule: frame `t` (centred on sample `t * hop_length + centre`: `centre=0` for torchaudio's
    `center=True` frames, `n_fft // 2` otherwise) is valid when its centre lies inside the clip's
    samples, from the first valid sample to one past the last, `[pad_before, pad_before + lengths]`.
    These are the frames the clip alone gives (`1 + lengths // hop_length` of them, centred frames, the
    clip starting on a hop). Frames whose window reaches into the padding near the ends count when
    their centre is inside.

    Args:
        lengths, pad_before: valid samples and the zeros before them (ints, or int64 tensors `[B]`).
        hop_length, n_frames: the STFT hop and the spectrogram's frames.
        centre: the sample offset of frame 0's centre.

    Returns:
        `(lengths, pad_before)` in frames, of the same kind as the input (no host read for tensors).

    Example:
        >>> frame_lengths(1000, 0, 200, 26), frame_lengths(1000, 2000, 200, 26), frame_lengths(5000, 0, 200, 26)
        ((6, 0), (6, 10), (26, 0))
    """
    first = -((centre - pad_before) // hop_length)  # ceil((pad_before - centre) / hop)
    last = (pad_before + lengths - centre) // hop_length
    if isinstance(first, torch.Tensor) or isinstance(last, torch.Tensor):
        like = first if isinstance(first, torch.Tensor) else last
        first, last = (v if isinstance(v, torch.Tensor) else torch.full_like(like, v) for v in (first, last))
        first = first.clamp(0, n_frames)
        return torch.minimum((last - first + 1).clamp(min=0), n_frames - first), first
    first = min(max(first, 0), n_frames)
    return min(max(last - first + 1, 0), n_frames - first), first


def _stft_meta(stft):
    "The frame settings of a torchaudio `Spectrogram`, as `AudioSpectrogram` metadata."
    return dict(n_fft=stft.n_fft, hop_length=stft.hop_length, win_length=stft.win_length)


# Bytes of complex STFT output per chunk on the CPU: a chunk's frames, spectrum and power stay in the
# L2/L3 caches between the steps, where a whole batch (40 MB for 64 clips of 5 s) would go through memory
# at every step. 64 clips of 5 s at 16 kHz on a 2-core x86 machine, 2 threads: 0.19 ms per clip with 2 to
# 4 MB chunks, 0.28 with 1 MB, 0.33 with 8 MB, 0.82 as one chunk (1 thread: 0.36, 0.38, 0.42; 16 MB 0.52).
CPU_CHUNK_BYTES = 2 << 20


class _SpecPipe(nn.Module):
    """torchaudio's `Spectrogram` or `MelSpectrogram`, then `AmplitudeToDB`, computed in chunks of items.

    The result is torchaudio's to float32 rounding: `torch.stft`'s spectrum bit for bit (its own steps
    with the reflect padding done cheaper, or `torch.stft` itself), the power as `re**2 + im**2`
    (torchaudio: `abs().pow(2)`, a hypot then a square: two passes and 1 ulp apart), the same mel matrix
    product, and the dB as `multiplier * log10(max(x, amin))` in place (the reference-level term is
    subtracted only when it is not 0, as the default `ref=1` makes it). `top_db` clamps per item
    `[C, F, frames]`, as torchaudio does on a batch. On the CPU the items go through every step in
    chunks of about `CPU_CHUNK_BYTES` of spectrum, which stay in cache; elsewhere (a GPU) the batch is
    one chunk. Inputs that need gradients take torchaudio's modules unchanged.
    """

    def __init__(self, spec, to_db=None):
        super().__init__()
        self.spec, self.to_db = spec, to_db
        # The power computed here from the STFT; other settings go through torchaudio's `Spectrogram`.
        st = self.stft
        self.direct = st.power == 2 and st.pad == 0 and not st.normalized

    @property
    def stft(self):
        return self.spec.spectrogram if self.mel_scale is not None else self.spec

    @property
    def mel_scale(self):
        return getattr(self.spec, "mel_scale", None)

    def _reference(self, x):
        y = self.spec(x)
        return y if self.to_db is None else self.to_db(y)

    def _shape(self, length):
        "`(F, frames)` of the spectrum of `length` samples, as `torch.stft` makes it."
        st = self.stft
        length += 2 * st.pad + (2 * (st.n_fft // 2) if st.center else 0)
        bins = self.mel_scale.n_mels if self.mel_scale is not None else st.n_fft // 2 + 1 if st.onesided else st.n_fft
        return bins, 1 + (length - st.n_fft) // st.hop_length

    def _power(self, rows, out):
        "The (mel) power spectrum of `rows` `[r, T]`, written into `out` `[r, F, frames]`."
        st = self.stft
        if not self.direct:
            return out.copy_(self.spec(rows))
        half, length = st.n_fft // 2, rows.shape[-1]
        if st.center and st.pad_mode == "reflect" and st.onesided and length > half and st.win_length <= st.n_fft:
            # `torch.stft`'s own steps (reflect padding, frames times the window, a real FFT), with the
            # padding as two flipped slices: equal to it bit for bit, and padding costs a third as much.
            padded = torch.cat([rows[:, 1 : half + 1].flip(-1), rows, rows[:, -half - 1 : -1].flip(-1)], -1)
            frames = padded.unfold(-1, st.n_fft, st.hop_length) * self._window(st)
            spec = torch.fft.rfft(frames).transpose(-1, -2)
        else:
            spec = torch.stft(
                rows,
                st.n_fft,
                hop_length=st.hop_length,
                win_length=st.win_length,
                window=st.window,
                center=st.center,
                pad_mode=st.pad_mode,
                normalized=False,
                onesided=st.onesided,
                return_complex=True,
            )
        parts = torch.view_as_real(spec)
        re, im = parts[..., 0], parts[..., 1]
        if self.mel_scale is None:
            return torch.mul(re, re, out=out).addcmul_(im, im)
        return out.copy_(self.mel_scale(torch.mul(re, re).addcmul_(im, im)))

    @staticmethod
    def _window(st):
        "The window of `st` centred in `n_fft` samples, as `torch.stft` pads a shorter one."
        left = (st.n_fft - st.win_length) // 2
        return torch.nn.functional.pad(st.window, (left, st.n_fft - st.win_length - left))

    def _db(self, y, items):
        "`AmplitudeToDB` in place on `y`, whose rows are `items` spectrograms `[C, F, frames]`."
        db = self.to_db
        y.clamp_min_(db.amin).log10_().mul_(db.multiplier)
        if db.db_multiplier != 0:
            y.sub_(db.multiplier * db.db_multiplier)
        if db.top_db is not None:
            per_item = y.view(items, -1)
            torch.maximum(per_item, per_item.amax(1, keepdim=True) - db.top_db, out=per_item)

    def forward(self, x):
        if x.ndim == 0 or self.stft.power is None or (x.requires_grad and torch.is_grad_enabled()):
            return self._reference(x)
        lead, length = x.shape[:-1], x.shape[-1]
        rows = x.reshape(-1, length)
        # rows per item: its channels; an item [C, T] or a lone signal [T] is one item (torchaudio's top_db)
        per_item = lead[-1] if x.ndim >= 3 else rows.shape[0]
        items = rows.shape[0] // per_item if per_item else 0
        bins, frames = self._shape(length)
        out = rows.new_empty((rows.shape[0], bins, frames))
        step = max(items, 1)
        if x.device.type == "cpu" and items:
            step = max(1, CPU_CHUNK_BYTES // max(1, per_item * (self.stft.n_fft // 2 + 1) * frames * 8))
            step = -(-items // -(-items // step))  # chunks of equal size: 64 items by 63 are 2 chunks of 32
        for i in range(0, items, step):
            part = slice(i * per_item, (i + step) * per_item)
            y = self._power(rows[part], out[part])
            if self.to_db is not None:
                self._db(y, y.shape[0] // per_item)
        return out.reshape(*lead, bins, frames)


class AudioToSpec(DisplayedTransform):
    """Turn an `AudioTensor` into an `AudioSpectrogram`.

    Args:
        mel (bool): mel filterbank (`MelSpectrogram`) instead of a linear-frequency `Spectrogram`.
        to_db (bool): convert power to decibels with `AmplitudeToDB`.
        top_db (float or None): clamp each spectrogram to `top_db` below its maximum (per item in a batch).
        **settings: keyword arguments of the torchaudio transform (`n_fft`, `hop_length`, `n_mels`, `sample_rate`...).

    Padding: a signal carrying `lengths` and `pad_before` (valid samples, as `ResizeSignal` and the
    batches of `get_dls` carry them) gives a spectrogram carrying them in frames (`frame_lengths`: the
    frames whose centre lies inside the clip), whose other frames hold what silence gives (-100 dB for a
    power dB spectrogram; with `top_db`, at least each clip's `max - top_db`), frames partly in the
    padding included.

    Shape:
        `[C, T]` -> `[C, F, frames]`; `[B, C, T]` -> `[B, C, F, frames]`. With the defaults
        (`n_fft=400`, `hop_length=200`), 5 s at 16 kHz gives `[1, 201, 401]`.

    Example:
        >>> import torch
        >>> a2s = AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())
        >>> a2s(AudioTensor(torch.randn(1, 80000), sr=16000)).shape
        torch.Size([1, 201, 401])
    """

    order = 50

    def __init__(self, mel=False, to_db=True, top_db=None, **settings):
        super().__init__()
        # fastaudio's configs carry every argument of every transform of its pipeline (and it passed
        # `sample_rate`, `n_mels`... to a linear spectrogram): keep those the torchaudio transform takes,
        # warn about the others instead of failing.
        accepted = get_usable_kwargs(T.MelSpectrogram if mel else T.Spectrogram, {}).keys()
        unused = sorted(k for k in settings if k not in accepted and k not in _DB_ARGS)
        if unused:
            warnings.warn(
                f"{type(self).__name__}: {', '.join(unused)} not used by this spectrogram; ignored", stacklevel=2
            )
        top_db = settings.pop("top_db", top_db)
        settings.pop("stype", None)  # follows the spectrogram's power (2: power, 1: magnitude)
        settings = {k: v for k, v in settings.items() if k in accepted}
        self.mel, self.to_db, self.top_db, self.settings = mel, to_db, top_db, settings
        self._init_pipeline()

    def _init_pipeline(self):
        # Built here, on the CPU (torchaudio reads its filterbank on the host), and copied to a device on first
        # use there without waiting for it: the transform itself never syncs.
        self._cpu_pipe = self._build()
        self._pipes = {}
        # dB of finite float32 power or magnitude stays within about +-800 dB: its sum cannot overflow, and is
        # cheaper than a min-max on the CPU. Power itself can come near float32's range: min-max there.
        self.finite = FiniteCheck(type(self).__name__, reduction="sum" if self.to_db else "minmax")

    def check(self) -> None:
        "Raise if a spectrogram made since the last check held NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    @classmethod
    def from_cfg(cls, cfg):
        "Build from an `AudioConfig` dataclass, or from a dict of the same fields (`mel`, `to_db`, `n_fft`...)."
        if is_dataclass(cfg):
            cfg = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        return cls(**dict(cfg))

    def _build(self):
        spec = (T.MelSpectrogram if self.mel else T.Spectrogram)(**self.settings)
        stft = spec.spectrogram if self.mel else spec
        self.meta = dict(_stft_meta(stft), mel=self.mel, to_db=self.to_db, mfcc=False)
        if self.mel:
            self.meta.update(n_mels=spec.n_mels, f_min=spec.f_min, f_max=spec.f_max)
        stype = "power" if stft.power == 2 else "magnitude"
        return _SpecPipe(spec, T.AmplitudeToDB(stype=stype, top_db=self.top_db) if self.to_db else None)

    def _pipe(self, device):
        if device.type == "cpu":
            return self._cpu_pipe
        if device not in self._pipes:
            self._pipes[device] = copy.deepcopy(self._cpu_pipe).to(device, non_blocking=True)
        return self._pipes[device]

    def _check_input(self, x):
        if x.nsamples == 0:
            raise ValueError(f"{type(self).__name__}: got an empty signal of shape {tuple(x.shape)}")
        expected = self.settings.get("sample_rate", 16000)
        if self.mel and x.sr != expected:
            raise ValueError(
                f"{type(self).__name__} is set for sample_rate={expected} but the audio is at "
                f"{x.sr} Hz: add Resample({expected}) to the item transforms or change sample_rate"
            )

    def encodes(self, x: AudioTensor):
        self._check_input(x)
        pipe = self._pipe(x.device)
        with torch.autocast(x.device.type, enabled=False):  # the dB log needs float32 range
            spec = pipe(x.as_subclass(torch.Tensor))
        self.finite.update(spec)
        lengths, pad_before = padding_of(x)
        if lengths is None:
            return AudioSpectrogram(spec, sr=x.sr, **self.meta)
        settings = self.settings.get("melkwargs") or self.settings  # MFCC's frame settings are in melkwargs
        centre = 0 if settings.get("center", True) else self.meta["n_fft"] // 2
        frames, before = frame_lengths(lengths, pad_before, self.meta["hop_length"], spec.shape[-1], centre)
        out = AudioSpectrogram(spec, sr=x.sr, **self.meta, lengths=frames, pad_before=before)
        if not has_padding(x):  # every clip full (marked by the loader): so is every frame
            out.unpadded = out.lengths
            return out
        # Padded frames read as silence, frames partly in the padding included.
        torch.where(valid_mask(out), spec, self._floor(spec, lengths), out=spec)  # in place: one pass
        return out

    def _silence(self, device):
        "What silence gives, one value per row `[F, 1]` (-100 dB in a power dB spectrogram), cached per device."
        silences = self.__dict__.setdefault("_silences", {})
        if device not in silences:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                zeros = torch.zeros(1, 1, 2 * self.meta["n_fft"], device=device)
                silences[device] = self._pipe(device)(zeros)[0, 0, :, :1]
        return silences[device]

    def _floor(self, spec, lengths):
        "The value of padded frames: silence, raised to each clip's `max - top_db` where higher (as `AmplitudeToDB`)."
        floor = self._silence(spec.device)
        if self.to_db and self.top_db is not None:
            batched = isinstance(lengths, torch.Tensor) and lengths.ndim == 1
            dims = tuple(range(1 if batched else 0, spec.ndim))
            floor = torch.maximum(floor, spec.amax(dims, keepdim=True) - self.top_db)
        return floor

    def __getstate__(self):
        # Device pipelines are copied again on the loading side; they may live on a GPU the loader lacks.
        return {k: v for k, v in self.__dict__.items() if k not in ("_pipes", "_silences")} | {"_pipes": {}}


def SpectrogramTransformer(mel=True, to_db=True):
    """A factory of `AudioToSpec` transforms of one kind, with fastaudio's frame defaults.

    The returned function takes the torchaudio arguments (`n_fft`, `hop_length`, `n_mels`, `f_max`...)
    and fills the ones left out as fastaudio did: `n_fft=1024`, `win_length=n_fft`,
    `hop_length=win_length // 2` (torchaudio's own defaults are 400 and 200).

    Example:
        >>> import torch
        >>> DBMelSpec = SpectrogramTransformer(mel=True, to_db=True)
        >>> sg = DBMelSpec(n_mels=64)(AudioTensor(torch.randn(1, 16000), sr=16000))
        >>> sg.shape, sg.n_fft, sg.hop_length
        (torch.Size([1, 64, 32]), 1024, 512)
    """

    def make(n_fft=1024, win_length=None, hop_length=None, **kwargs):
        win_length = n_fft if win_length is None else win_length
        hop_length = win_length // 2 if hop_length is None else hop_length
        return AudioToSpec(mel=mel, to_db=to_db, n_fft=n_fft, win_length=win_length, hop_length=hop_length, **kwargs)

    make.__name__ = f"{'DB' if to_db else ''}{'Mel' if mel else ''}Spec"
    return make


class AudioToMFCC(AudioToSpec):
    """Mel-frequency cepstral coefficients, as an `AudioSpectrogram` whose rows are coefficients.

    Args:
        **settings: keyword arguments of `torchaudio.transforms.MFCC` (`sample_rate`, `n_mfcc`, `melkwargs`...).

    Shape:
        `[C, T]` -> `[C, n_mfcc, frames]`; `[B, C, T]` -> `[B, C, n_mfcc, frames]`.

    Example:
        >>> import torch
        >>> AudioToMFCC(n_mfcc=20)(AudioTensor(torch.randn(1, 16000), sr=16000)).shape
        torch.Size([1, 20, 81])
    """

    def __init__(self, **settings):
        DisplayedTransform.__init__(self)  # MFCC settings go to torchaudio as given, unfiltered
        self.mel, self.to_db, self.top_db, self.settings = True, False, None, settings
        self._init_pipeline()

    def _build(self):
        mfcc = T.MFCC(**self.settings)
        self.meta = dict(
            _stft_meta(mfcc.MelSpectrogram.spectrogram), mel=False, to_db=False, mfcc=True, n_mfcc=mfcc.n_mfcc
        )
        return mfcc
