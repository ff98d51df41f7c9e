"""The tensor math of the audio augmentations, in pure torch (no fastai): masks, colored noise, shifts.

SpecAugment masking (Park et al. 2019, https://arxiv.org/abs/1904.08779) and power-law noise
(Timmer & Koenig 1995, "On generating power law noise", A&A 300, 707) as batch functions that run on
the batch's device: every random number is drawn there with `torch.rand`/`torch.randn` (seeded by
`torch.manual_seed`, or by the `generator` argument), and nothing reads a tensor value back on the
host, so a batch costs no host sync. The public names and arguments follow fastaudio 1.0.2's
`fastaudio.augment.functional`; the fastai transforms over them are in `augment_signal` and
`augment_spectrogram`.
"""

from collections.abc import Sequence

import torch

__all__ = [
    "NoiseColor",
    "add_noise_",
    "band_mask",
    "colored_noise",
    "mask_along_axis",
    "mask_along_axis_",
    "no_information_value",
    "random_mask",
    "region_mask",
    "shift_signal",
]


def region_mask(
    n: int,
    min_mask_size: float,
    max_mask_size: float,
    maskable_length: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`n` boolean masks, each one contiguous run of `True` of random size and position.

    Sizes are uniform in `[min_mask_size, max_mask_size)`, starts uniform over the positions where the
    run fits; a run covers the indices `i` with `start <= i < start + size`.

    Args:
        n (int): how many masks.
        min_mask_size, max_mask_size (float): range of the run's length.
        maskable_length (int): length of each mask.
        device, generator: where to draw the random numbers (a `torch.Generator` makes them reproducible).

    Shape:
        `[n, maskable_length]`, bool.

    Example:
        >>> import torch
        >>> m = region_mask(3, 4, 4, 10)
        >>> m.shape, m.sum(1).tolist()
        (torch.Size([3, 10]), [4, 4, 4])
    """
    sizes = torch.rand([n, 1], device=device, generator=generator) * (max_mask_size - min_mask_size) + min_mask_size
    starts = torch.rand([n, 1], device=device, generator=generator) * (maskable_length - sizes)
    idx = torch.arange(maskable_length, device=device)
    return (starts <= idx) & (idx < starts + sizes)


def random_mask(
    shape: Sequence[int],
    p: float | torch.Tensor,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A bool tensor whose elements are `True` independently with probability `p`.

    Args:
        shape: the mask's shape.
        p (float or tensor broadcastable to `shape`): probability of `True` (0 never, 1 always).

    Example:
        >>> random_mask([2, 3], 1.0).all().item(), random_mask([2, 3], 0.0).any().item()
        (True, False)
    """
    return torch.rand(shape, device=device, generator=generator) < p


def no_information_value(x: torch.Tensor, meta: object = None) -> float | torch.Tensor:
    """The fill that carries no information on the spectrogram batch `x` `[..., F, T]`.

    0 when `meta` (the spectrogram, or any object with its metadata; default `x`) is marked
    `standardized` (as `SpecNormalize`, `InstanceSpecNorm` and `SlidingSpecNorm(norm_vars=True)` mark
    their output) or `centred` (`SlidingSpecNorm` without `norm_vars`: mean removed): 0 is the mean a
    normalization maps to. Otherwise the clip's mean: each item's per-channel mean over its last two
    axes, `[..., 1, 1]`.

    Example:
        >>> import torch
        >>> class Meta: standardized = True
        >>> no_information_value(torch.ones(1, 2, 2), Meta()), no_information_value(torch.ones(1, 2, 2)).flatten()
        (0.0, tensor([1.]))
    """
    meta = x if meta is None else meta
    if getattr(meta, "standardized", False) or getattr(meta, "centred", False):
        return 0.0
    return x.mean((-2, -1), keepdim=True)


def _fill_value(x, mask_val):
    "The value a mask writes: `mask_val`, or `no_information_value(x)` when `None`."
    return no_information_value(x) if mask_val is None else mask_val


def band_mask(
    x: torch.Tensor,
    num_masks: int,
    min_size: float,
    max_size: float,
    axis: int,
    first_start: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each item of `x` `[B, C, F, T]`, the union of `num_masks` random bands along `axis` (2: rows, 3: frames).

    Band widths are uniform in `[min_size, max_size]` (`region_mask`); with `first_start`, the first band
    of every item is `[first_start, first_start + max_size)` instead of random.

    Shape:
        `[B, 1, F, 1]` (axis 2) or `[B, 1, 1, T]` (axis 3), bool: one mask per item, shared by its channels.

    Example:
        >>> import torch
        >>> band_mask(torch.zeros(2, 1, 6, 3), 1, 2, 2, axis=2, first_start=1).flatten(1).tolist()
        [[False, True, True, False, False, False], [False, True, True, False, False, False]]
    """
    if axis not in (2, 3):
        raise ValueError(f"can only mask the frequency (2) or time (3) axis of [B, C, F, T], not axis {axis}")
    n, length = x.shape[0], x.shape[axis]
    masks = region_mask(num_masks * n, min_size, max_size, length, device=x.device, generator=generator)
    masks = masks.view(num_masks, n, length)
    if first_start is not None:
        idx = torch.arange(length, device=x.device)
        masks[0] = (idx >= first_start) & (idx < first_start + max_size)
    masks = masks.any(0)
    return masks.view(n, 1, length, 1) if axis == 2 else masks.view(n, 1, 1, length)


def mask_along_axis(
    specgrams: torch.Tensor,
    num_masks: int,
    min_size: float,
    max_size: float,
    mask_val: float | None = None,
    axis: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment masks: `num_masks` random bands of frequency rows (`axis=2`) or time frames (`axis=3`).

    Each item gets its own bands, shared by its channels. Masked values become `mask_val`, or, when it
    is `None`, `no_information_value(specgrams)`: 0 on a standardized spectrogram, else the item's
    per-channel mean over the whole spectrogram (the clip's mean). Returns a new tensor.

    Args:
        specgrams: `[B, C, F, T]`.
        num_masks (int): bands per item (they may overlap).
        min_size, max_size (float): range of each band's width, in rows or frames.
        mask_val (float or None): the fill; `None` for `no_information_value`.
        axis (int): 2 (frequency) or 3 (time).

    Example:
        >>> import torch
        >>> x = torch.arange(6.).repeat(2, 1, 4, 1)          # [2, 1, 4, 6]: value = frame index
        >>> y = mask_along_axis(x, 1, 2, 2, mask_val=-1., axis=3)
        >>> (y == -1).sum((-2, -1)).flatten().tolist()       # 2 frames x 4 rows per item
        [8, 8]
    """
    masks = band_mask(specgrams, num_masks, min_size, max_size, axis, generator=generator)
    return torch.where(masks, _fill_value(specgrams, mask_val), specgrams)


def mask_along_axis_(
    specgrams: torch.Tensor,
    num_masks: int,
    min_size: float,
    max_size: float,
    mask_val: float | None = None,
    axis: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    "In-place `mask_along_axis` (fastaudio's name): writes the masks into `specgrams` and returns it."
    masks = band_mask(specgrams, num_masks, min_size, max_size, axis, generator=generator)
    if mask_val is None:
        return specgrams.copy_(torch.where(masks, _fill_value(specgrams, None), specgrams))
    return specgrams.masked_fill_(masks, mask_val)


class NoiseColor:
    """Named power-law exponents `beta` of noise whose power spectrum falls as `1 / f**beta`.

    Any real exponent in `[-2, 2]` is a valid color (e.g. 0.5, between white and pink).

    Example:
        >>> NoiseColor.Pink, NoiseColor.valid(0.5), NoiseColor.valid(3)
        (1, True, False)
    """

    Violet = -2
    Blue = -1
    White = 0
    Pink = 1
    Brown = 2

    @staticmethod
    def valid(value: object) -> bool:
        "Is `value` a finite real exponent in `[-2, 2]`?"
        try:
            return -2 <= float(value) <= 2
        except (TypeError, ValueError):
            return False


def colored_noise(
    shape: Sequence[int],
    exponent: float,
    fmin: float = 0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise whose power spectral density falls as `1 / f**exponent`, with unit variance.

    The method of Timmer & Koenig (1995): independent Gaussian real and imaginary parts per frequency,
    scaled by `f**(-exponent / 2)`, then an inverse real FFT along the last axis. The DC term is 0 (the
    noise has zero mean), and the result is divided by its theoretical standard deviation, so its
    variance is 1 for every color. White noise (`exponent == 0`) is drawn directly.

    Args:
        shape: output shape; the last axis is time, the others are independent series.
        exponent (float): 0 white, 1 pink, 2 brown, -1 blue, -2 violet (`NoiseColor`), or any real.
        fmin (float): frequencies below `fmin` (in cycles per sample, at most 0.5) get the scale of
            `fmin`; at least `1 / n`.

    Example:
        >>> import torch
        >>> y = colored_noise([64, 8000], NoiseColor.Pink, generator=torch.Generator().manual_seed(0))
        >>> y.shape, round(y.std().item(), 1)
        (torch.Size([64, 8000]), 1.0)
    """
    shape = list(shape)
    if exponent == 0:
        return torch.randn(shape, device=device, generator=generator)
    n = shape[-1]
    f = torch.fft.rfftfreq(n, device=device)
    fmin = max(fmin, 1.0 / n)
    scale = f.clamp(min=fmin) ** (-exponent / 2.0)
    # In-place fills, not `scale[0] = 0.0`: assigning a Python number copies it from the host on CUDA (a sync).
    scale[0].zero_()  # zero mean
    # Variance of irfft's output: each complex term k contributes 4 * scale_k**2 / n**2 (its real and
    # imaginary parts, both counted twice by Hermitian symmetry); the real Nyquist term of an even
    # length contributes scale**2 / n**2.
    weight = torch.full_like(scale, 4.0)
    if n % 2 == 0:
        weight[-1].fill_(1.0)
    sigma = torch.sqrt((weight * scale**2).sum()) / n
    # Real and imaginary parts drawn in one call, as the last axis of a view_as_complex buffer.
    parts = torch.randn([*shape[:-1], f.numel(), 2], device=device, generator=generator)
    if n % 2 == 0:
        parts[..., -1, 1].zero_()  # the Nyquist term of a real signal is real
    spectrum = torch.view_as_complex(parts) * (scale / sigma)  # unit variance folded into the small scale
    return torch.fft.irfft(spectrum, n=n, dim=-1)


def add_noise_(
    x: torch.Tensor,
    color: float,
    min_level: float,
    max_level: float,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add colored noise to each item of the batch `x` in place, at a random level relative to its std.

    Item `i` gets `level_i * std(x_i) * noise` with `level_i` uniform in `[min_level, max_level]`, with
    probability `p` (0 otherwise). Levels are per item, not per channel.

    Args:
        x: a batch `[B, ...]`, modified in place and returned.
        color (float): the noise exponent (`NoiseColor`).
        min_level, max_level (float): range of the noise's std as a fraction of the item's std.
        p (float): probability that an item gets noise.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 1, 100)
        >>> add_noise_(x, NoiseColor.White, 0.1, 0.2).abs().sum().item()    # silence stays silent
        0.0
    """
    n = x.shape[0]
    shape = [n] + [1] * (x.ndim - 1)
    levels = torch.rand(shape, device=x.device, generator=generator) * (max_level - min_level) + min_level
    if p < 1:
        levels = levels * random_mask(shape, p, device=x.device, generator=generator)
    std = x.reshape(n, -1).std(1).view(shape)
    noise = colored_noise(x.shape, color, device=x.device, generator=generator).to(x.dtype)
    return x.addcmul_(levels * std, noise)


def shift_signal(
    x: torch.Tensor, shift: int | torch.Tensor, roll: bool = False, fill: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Shift `x` along its last axis by `shift` samples (right if positive), filling with `fill` or rolling.

    Args:
        x: a tensor `[..., T]`.
        shift (int or integer tensor `[B]`): one shift for all of `x`, or one per item of a batch `[B, ..., T]`.
        roll (bool): wrap the samples that leave one end around to the other instead of filling.
        fill (float or tensor broadcastable to `x`): the value of the vacated samples (0: silence).

    Returns a new tensor of `x`'s shape; sample `t` of the output is sample `t - shift` of the input.

    Example:
        >>> import torch
        >>> shift_signal(torch.arange(1, 6), 2), shift_signal(torch.arange(1, 6), -2, roll=True)
        (tensor([0, 0, 1, 2, 3]), tensor([3, 4, 5, 1, 2]))
    """
    n = x.shape[-1]
    if not torch.is_tensor(shift):
        if roll:
            return torch.roll(x, shift, dims=-1)
        shift = max(-n, min(n, int(shift)))
        out = torch.empty_like(x)
        if shift >= 0:
            out[..., shift:] = x[..., : n - shift]
            out[..., :shift] = fill
        else:
            out[..., :shift] = x[..., -shift:]
            out[..., shift:] = fill
        return out
    # One shift per item: gather from `t - shift`, out-of-range sources are zeros (or wrap when rolling).
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    src = torch.arange(n, device=x.device) - shift.to(x.device).view(shape)
    if roll:
        return x.gather(-1, (src % n).expand(x.shape))
    valid = (src >= 0) & (src < n)
    out = x.gather(-1, src.clamp(0, n - 1).expand(x.shape))
    # a number goes to the kernel as an argument (torch.as_tensor on CUDA would copy it from the host: a sync)
    return torch.where(valid, out, fill.to(x.dtype) if torch.is_tensor(fill) else float(fill))
