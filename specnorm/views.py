"""fastai's result views for audio: `show_results` and `plot_top_losses` on waveforms and spectrograms.

fastai draws results through type-dispatched functions (plum, through fasttransform): `Learner.show_results`
calls `show_results(x, y, samples, outs)` and `Interpretation.plot_top_losses` calls
`plot_top_losses(x, y, samples, outs, raws, losses)`, where `x` is the decoded input batch. fastai implements
them for `TensorImage` only; the methods here add `AudioTensor` and `AudioSpectrogram` inputs. Each view is
one figure: a grid (fastai's `get_grid`) with one panel per item, the waveform or spectrogram titled with its
target and prediction (and, for top losses, the loss and the predicted class's probability).

With `hear=True` a notebook also gets one audio player per panel, in panel order. A spectrogram is heard
through an approximate waveform: power from dB, mel rows mapped back to linear frequencies
(`InverseMelScale`), and the phase estimated by Griffin-Lim (Griffin & Lim, 1984); MFCCs are not invertible
this way and get no player. Outside a notebook `hear` does nothing.
"""

import html
import warnings

import torch
import torchaudio.transforms as T
from fastai.torch_core import TensorCategory, TensorMultiCategory
from fastai.vision.data import get_grid
from fastcore.foundation import L
from fastcore.imports import in_notebook
from plum import dispatch

from .audio import AudioSpectrogram, AudioTensor

__all__ = ["plot_top_losses", "show_results", "spec_to_audio"]

_RIGHT, _WRONG = "green", "red"


def spec_to_audio(spec: AudioSpectrogram, n_iter: int = 32) -> AudioTensor:
    """An approximate waveform for a (decoded, not standardized) spectrogram item, to listen to it.

    dB values become power (`10 ** (dB / 10)`, which also holds for a magnitude spectrogram in dB), mel rows
    are mapped back to linear frequency bins (`InverseMelScale`), and Griffin-Lim estimates the phase. The
    default mel and STFT settings of `AudioToSpec` are assumed (HTK mel scale, no filter norm, power 2).

    Args:
        spec (AudioSpectrogram): `[C, F, frames]`, as `AudioToSpec` made it (its metadata gives the settings).
        n_iter (int): Griffin-Lim iterations.

    Returns:
        `AudioTensor` `[C, samples]` at `spec.sr`.

    Example:
        >>> import torch
        >>> from specnorm.spectrogram import AudioToSpec
        >>> a = AudioTensor(torch.sin(torch.arange(8000) * 2 * torch.pi * 440 / 8000), sr=8000)
        >>> y = spec_to_audio(AudioToSpec(n_fft=256, hop_length=64)(a))
        >>> y.sr, y.shape
        (8000, torch.Size([1, 8000]))
    """
    if getattr(spec, "mfcc", False):
        raise ValueError("spec_to_audio: MFCCs cannot be inverted to a waveform")
    if getattr(spec, "standardized", False):
        raise ValueError("spec_to_audio: decode the standardized spectrogram first (dls.decode_batch)")
    x = spec.detach().as_subclass(torch.Tensor).float()
    power = 10 ** (x / 10) if getattr(spec, "to_db", False) else x
    n_stft = spec.n_fft // 2 + 1
    if getattr(spec, "mel", False):
        inverse = T.InverseMelScale(n_stft, spec.n_mels, spec.sr, spec.f_min, spec.f_max).to(x.device)
        power = inverse(power)
    griffin_lim = T.GriffinLim(
        spec.n_fft,
        n_iter,
        spec.win_length,
        spec.hop_length,
        power=2.0,
        length=(spec.width - 1) * spec.hop_length,  # centred frames, as AudioToSpec makes them
        rand_init=False,  # the same clip sounds the same each time
    ).to(x.device)
    return AudioTensor(griffin_lim(power), sr=spec.sr)


def _label(o):
    "A target or prediction as short text: categories as they are, numbers to 3 digits, label lists joined."
    if isinstance(o, str):
        return o
    if isinstance(o, torch.Tensor) and o.ndim == 0:
        o = o.item()
    if isinstance(o, float):
        return f"{o:.3g}"
    if isinstance(o, (list, tuple, L, torch.Tensor)):
        return ";".join(map(_label, o))
    return str(o)


def _hear(xs, titles):
    "In a notebook, one labelled audio player per item; elsewhere nothing."
    if not in_notebook():
        return
    from IPython.display import HTML, Audio, display

    for i, (x, title) in enumerate(zip(xs, titles)):
        if isinstance(x, AudioSpectrogram):
            if getattr(x, "mfcc", False):
                warnings.warn("hear=True: MFCCs cannot be played; no player shown", stacklevel=3)
                return
            x = spec_to_audio(x)
        display(HTML(f"<small>{i + 1}. {html.escape(title)}</small>"), Audio(x.cpu().numpy(), rate=x.sr))


def _title(ax, text, right):
    "Panel title; green or red when the target is a class (`right` is None for other targets: no colour)."
    colour = {} if right is None else dict(color=_RIGHT if right else _WRONG)
    ax.set_title(text, fontsize="medium", **colour)


def _is_class(y):
    return isinstance(y, (TensorCategory, TensorMultiCategory))


@dispatch
def show_results(
    x: AudioTensor | AudioSpectrogram,
    y,
    samples,
    outs,
    ctxs=None,
    max_n=9,
    nrows=None,
    ncols=None,
    figsize=None,
    hear=False,
    **kwargs,
):
    """One grid figure: each waveform or spectrogram titled `target / prediction` (classes: green when right).

    Called by `learn.show_results()` and `dls.show_results(b, preds)`; `hear=True` adds players in a notebook;
    other keyword arguments go to the item's `show` (e.g. `colorbar=False`, `cmap`).
    """
    n = min(len(samples), max_n)
    if ctxs is None:
        ctxs = get_grid(n, nrows=nrows, ncols=ncols, figsize=figsize, title="target / prediction")
    titles = []
    for (item, *targets), out, ax in zip(samples[:n], outs[:n], ctxs):
        target, pred = _label(targets[0]) if targets else "?", _label(out[0])
        item.show(ctx=ax, **kwargs)
        _title(ax, f"{target} / {pred}", target == pred if _is_class(y) else None)
        titles.append(f"target {target}, prediction {pred}")
    ctxs[0].figure.tight_layout()
    if hear:
        _hear([s[0] for s in samples[:n]], titles)
    return ctxs


@dispatch
def plot_top_losses(
    x: AudioTensor | AudioSpectrogram,
    y,
    samples,
    outs,
    raws,
    losses,
    nrows=None,
    ncols=None,
    figsize=None,
    hear=False,
    **kwargs,
):
    """One grid figure of the items with the largest losses: `prediction / target` and `loss / probability`.

    Called by `Interpretation.from_learner(learn).plot_top_losses(k)`. The probability is the predicted
    class's (single-label classification, `TensorCategory` targets); other targets show the loss only.
    `hear=True` adds players in a notebook; other keyword arguments go to the item's `show`.
    """
    title = "prediction / target / loss" + (" / probability" if isinstance(y, TensorCategory) else "")
    axs = get_grid(len(samples), nrows=nrows, ncols=ncols, figsize=figsize, title=title)
    titles = []
    for ax, (item, *targets), out, raw, loss in zip(axs, samples, outs, raws, losses):
        target, pred = _label(targets[0]) if targets else "?", _label(out[0])
        scores = f"{float(loss):.2f}" + (f" / {float(raw.max()):.2f}" if isinstance(y, TensorCategory) else "")
        item.show(ctx=ax, **kwargs)
        _title(ax, f"{pred} / {target}\n{scores}", target == pred if _is_class(y) else None)
        titles.append(f"prediction {pred}, target {target}, loss {float(loss):.2f}")
    axs[0].figure.tight_layout()
    if hear:
        _hear([s[0] for s in samples], titles)
    return axs
