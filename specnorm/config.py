"""Spectrogram settings as dataclasses: `AudioConfig.BasicSpectrogram`, `BasicMelSpectrogram`, `BasicMFCC`, `Voice`.

As in fastaudio, each config's fields and defaults are read from the signature of the torchaudio
transform it configures, so they stay in step with torchaudio; `mel` and `to_db` (and `top_db`)
select the pipeline `AudioToSpec.from_cfg` builds.
"""

import inspect
from collections.abc import Callable
from dataclasses import field, make_dataclass
from typing import Any

import torchaudio.transforms as T

__all__ = ["AudioConfig", "config_from_func"]

# Deprecated torchaudio arguments whose defaults only exist to warn.
_SKIPPED = {"return_complex", "onesided"}


def config_from_func(func: Callable, name: str, **kwargs) -> type:
    """A dataclass named `name` whose fields are `func`'s arguments that have defaults, plus `kwargs`.

    `kwargs` add fields or override defaults. Deprecated torchaudio arguments are left out.

    Example:
        >>> import torchaudio.transforms as T
        >>> Cfg = config_from_func(T.Spectrogram, "Cfg", mel=False, n_fft=512)
        >>> cfg = Cfg(hop_length=128)
        >>> cfg.n_fft, cfg.hop_length, cfg.mel
        (512, 128, False)
    """
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in _SKIPPED
    ]
    defaults = {p.name: p.default for p in params} | kwargs
    cls = make_dataclass(name, [(k, Any, field(default=v)) for k, v in defaults.items()])
    cls.__doc__ = f"Settings for `{getattr(func, '__name__', func)}` (its defaults) plus {sorted(kwargs)}."
    return cls


def _config_from(name, transform, **extra):
    return config_from_func(transform, name, **extra)


class AudioConfig:
    """Ready-made settings for `AudioToSpec.from_cfg` and `AudioToMFCC.from_cfg`.

    Example:
        >>> cfg = AudioConfig.BasicMelSpectrogram(n_mels=64)
        >>> cfg.mel, cfg.to_db, cfg.n_mels, cfg.n_fft
        (True, True, 64, 400)
    """

    BasicSpectrogram = _config_from("BasicSpectrogram", T.Spectrogram, mel=False, to_db=True, top_db=None)
    BasicMelSpectrogram = _config_from("BasicMelSpectrogram", T.MelSpectrogram, mel=True, to_db=True, top_db=None)
    BasicMFCC = _config_from("BasicMFCC", T.MFCC)
    # Speech: 16 kHz, 64 ms windows, 8 ms hop, 128 mel bands over the voice range (fastaudio's `Voice`).
    Voice = _config_from(
        "Voice",
        T.MelSpectrogram,
        mel=True,
        to_db=True,
        top_db=None,
        sample_rate=16000,
        n_fft=1024,
        hop_length=128,
        f_min=50.0,
        f_max=8000.0,
        n_mels=128,
    )
