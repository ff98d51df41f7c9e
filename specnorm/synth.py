"""A synthetic sound-event dataset laid out like ESC-50, for running experiments with no download.

ESC-50 (Piczak, "ESC: Dataset for Environmental Sound Classification", ACM MM 2015) is 2000 clips of
5 s at 44.1 kHz in `audio/`, listed in `meta/esc50.csv` with their file name, cross-validation fold
(1..5), integer target and category name. `make_synthetic_dataset` writes the same layout with
classes of simple sounds: pure tones, harmonic stacks, chirps, band-limited noise and click trains,
each at its own frequency or rate.

What makes it a useful stand-in for normalization experiments is how its frequency channels differ,
as in real recordings: each clip's event has a random gain spread over 40 dB, a random onset and
length, and sits on coloured background noise (spectral slope between pink and brown, so low
frequencies carry far more energy than high ones) at a random signal-to-noise ratio. Every clip is
generated from its own seed `(seed, class, clip)`, so a dataset is identical from one call to the next.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

__all__ = ["SYNTH_CLASSES", "make_synthetic_dataset"]

# (category name, kind, parameters). Frequencies stay below 7.5 kHz, so every class survives
# resampling to 16 kHz; kinds alternate so that the first few classes already differ in kind.
SYNTH_CLASSES = (
    ("tone_440", "tone", dict(freq=440.0)),
    ("chirp_up", "chirp", dict(f_start=250.0, f_end=4000.0)),
    ("noise_band_2k", "noise_band", dict(low=1600.0, high=2500.0)),
    ("clicks_8hz", "clicks", dict(rate=8.0)),
    ("harmonic_220", "harmonic", dict(freq=220.0)),
    ("tone_3k", "tone", dict(freq=3000.0)),
    ("chirp_down", "chirp", dict(f_start=5000.0, f_end=400.0)),
    ("noise_band_500", "noise_band", dict(low=350.0, high=700.0)),
    ("clicks_30hz", "clicks", dict(rate=30.0)),
    ("harmonic_700", "harmonic", dict(freq=700.0)),
)
N_FOLDS = 5
GAIN_RANGE_DB = (-40.0, 0.0)  # event peak, relative to PEAK
SNR_RANGE_DB = (-10.0, 20.0)  # event RMS over background RMS
DISTRACTOR_PROB = 0.5  # chance that a quieter event of another class overlaps the clip
DISTRACTOR_LEVEL_DB = (-30.0, -10.0)  # its peak relative to the event's
NOISE_SLOPE_RANGE = (1.0, 2.0)  # background power ~ 1 / f**slope: 1 is pink, 2 is brown
PEAK = 0.7  # peak of the loudest events: headroom for the background
JITTER = 0.03  # relative spread of each class's frequency or rate
MAX_FREQ = 7500.0  # harmonics stop below this frequency


def _shaped_noise(rng, n, sr, weight):
    "Gaussian noise of `n` samples whose amplitude spectrum is `weight(freqs)`, scaled to unit RMS."
    # Shape a power-of-two block and keep its start: FFTs of arbitrary (e.g. prime) lengths are slow.
    n_fft = 1 << max(n - 1, 1).bit_length()
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    spectrum = np.fft.rfft(rng.standard_normal(n_fft)) * weight(freqs)
    x = np.fft.irfft(spectrum, n_fft)[:n]
    return x / max(np.sqrt(np.mean(x**2)), 1e-12)


def _event(kind, params, rng, n, sr):
    "The class's sound over `n` samples, before gain."
    t = np.arange(n) / sr
    scale = 1 + rng.uniform(-JITTER, JITTER)
    if kind == "tone":
        return np.sin(2 * np.pi * params["freq"] * scale * t + rng.uniform(0, 2 * np.pi))
    if kind == "harmonic":
        f0 = params["freq"] * scale
        n_harmonics = int(min(MAX_FREQ, sr / 2 * 0.95) // f0)
        phases = rng.uniform(0, 2 * np.pi, n_harmonics)
        # Harmonic k is the imaginary part of fundamental**k: one complex product per harmonic, no sin.
        fundamental = np.exp(2j * np.pi * f0 * t)
        harmonic, x = np.ones(n, complex), np.zeros(n)
        for k in range(1, n_harmonics + 1):
            harmonic *= fundamental
            x += (harmonic * np.exp(1j * phases[k - 1])).imag / k
        return x
    if kind == "chirp":
        # Exponential sweep: the instantaneous frequency goes f0 -> f1 over the event.
        f0, f1 = params["f_start"] * scale, params["f_end"] * scale
        length = n / sr
        rate = np.log(f1 / f0) / length
        return np.sin(2 * np.pi * f0 * np.expm1(rate * t) / rate)
    if kind == "noise_band":
        low, high = params["low"] * scale, params["high"] * scale
        return _shaped_noise(rng, n, sr, lambda f: ((f >= low) & (f <= high)).astype(float))
    if kind == "clicks":
        period = sr / (params["rate"] * scale)
        impulses = np.zeros(n)
        impulses[(np.arange(rng.uniform(0, period), n, period)).astype(int)] = 1.0
        # Each click is a 3 ms exponentially decaying noise burst.
        burst_len = max(int(0.003 * sr), 1)
        burst = rng.standard_normal(burst_len) * np.exp(-np.arange(burst_len) / (burst_len / 4))
        return np.convolve(impulses, burst)[:n]
    raise ValueError(f"unknown kind of synthetic sound: {kind!r}")


def _placed_event(kind, params, rng, n, sr, peak):
    "The event at a random onset and length within `n` samples, scaled to `peak`: `(onset, samples)`."
    onset = int(rng.uniform(0, 0.4) * n)
    length = max(int(rng.uniform(0.4, 1.0) * (n - onset)), 1)
    event = _event(kind, params, rng, length, sr)
    # 10 ms raised-cosine fades so the event's edges do not click.
    fade = min(int(0.01 * sr), length // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        event[:fade] *= ramp
        event[length - fade :] *= ramp[::-1]
    return onset, event * (peak / max(np.abs(event).max(), 1e-12))


def _clip(target, n_classes, rng, n, sr):
    "One clip of class `target`: its event over coloured background noise, maybe with a quieter other event."
    _, kind, params = SYNTH_CLASSES[target]
    peak = PEAK * 10 ** (rng.uniform(*GAIN_RANGE_DB) / 20)
    onset, event = _placed_event(kind, params, rng, n, sr, peak)
    event_rms = np.sqrt(np.mean(event**2))
    slope = rng.uniform(*NOISE_SLOPE_RANGE)
    # Amplitude ~ f ** (-slope / 2) above 20 Hz; nothing below, so the clip has no DC drift.
    background = _shaped_noise(rng, n, sr, lambda f: np.where(f >= 20, np.maximum(f, 20) ** (-slope / 2), 0.0))
    x = background * event_rms / 10 ** (rng.uniform(*SNR_RANGE_DB) / 20)
    x[onset : onset + len(event)] += event
    if n_classes > 1 and rng.uniform() < DISTRACTOR_PROB:
        other = (target + rng.integers(1, n_classes)) % n_classes
        _, kind, params = SYNTH_CLASSES[other]
        onset, distractor = _placed_event(
            kind, params, rng, n, sr, peak * 10 ** (rng.uniform(*DISTRACTOR_LEVEL_DB) / 20)
        )
        x[onset : onset + len(distractor)] += distractor
    peak = np.abs(x).max()
    return x if peak <= 0.99 else x * (0.99 / peak)


def make_synthetic_dataset(
    root: str | os.PathLike,
    n_classes: int = 10,
    clips_per_class: int = 40,
    seconds: float = 5.0,
    sr: int = 44100,
    seed: int = 0,
) -> pd.DataFrame:
    """Write a synthetic ESC-50-style dataset to `root` and return its metadata.

    Args:
        root: folder to write `audio/*.wav` (16-bit PCM, mono) and `meta/esc50.csv` into (created if missing;
            files of the same name are overwritten).
        n_classes (int): how many of the `SYNTH_CLASSES` to use (1 to 10), in their order.
        clips_per_class (int): clips of each class; clip `i` goes to fold `i % 5 + 1`, so with a multiple of
            5 every fold holds the same number of clips of every class. At least 5.
        seconds (float): length of every clip.
        sr (int): sample rate in Hz (at least 16000, so every class fits below Nyquist).
        seed (int): the dataset is a function of `seed` (and of the other arguments).

    Returns:
        A DataFrame with ESC-50's columns `filename`, `fold`, `target`, `category`, `esc10`, `src_file`,
        `take`, the same as `meta/esc50.csv`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     df = make_synthetic_dataset(root, n_classes=3, clips_per_class=5, seconds=1.0)
        >>> len(df), sorted(df.category.unique()), df.fold.value_counts().sort_index().tolist()
        (15, ['chirp_up', 'noise_band_2k', 'tone_440'], [3, 3, 3, 3, 3])
    """
    if not 1 <= n_classes <= len(SYNTH_CLASSES):
        raise ValueError(f"n_classes must be between 1 and {len(SYNTH_CLASSES)}, got {n_classes}")
    if clips_per_class < N_FOLDS:
        raise ValueError(f"clips_per_class must be at least {N_FOLDS} (one per fold), got {clips_per_class}")
    if sr < 16000:
        raise ValueError(f"sr must be at least 16000 Hz so every class fits below Nyquist, got {sr}")
    n = round(seconds * sr)
    if n < 1:
        raise ValueError(f"seconds={seconds} at sr={sr} gives no samples")
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for target, (category, _, _) in enumerate(SYNTH_CLASSES[:n_classes]):
        for i in range(clips_per_class):
            rng = np.random.default_rng([seed, target, i])
            fold = i % N_FOLDS + 1
            src_file = target * clips_per_class + i
            filename = f"{fold}-{src_file}-A-{target}.wav"
            sf.write(
                root / "audio" / filename, _clip(target, n_classes, rng, n, sr).astype(np.float32), sr, subtype="PCM_16"
            )
            rows.append(
                dict(
                    filename=filename,
                    fold=fold,
                    target=target,
                    category=category,
                    esc10=False,
                    src_file=src_file,
                    take="A",
                )
            )
    df = pd.DataFrame(rows)
    df.to_csv(root / "meta" / "esc50.csv", index=False)
    return df
