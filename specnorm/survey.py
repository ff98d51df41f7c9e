"""Defaults that fit the data: survey a dataset's files (rate, length, channels) from their headers.

`survey_audio` reads only each file's header (`soundfile.info`, in parallel threads), never the samples,
and turns what it measures into two defaults, each with a simple rule:

- **Sample rate: do not upsample.** Upsampling adds no information: the band above the native Nyquist
  frequency holds only resampler imaging, and a model learns from that empty half. The default is the
  highest rate that at least 90% of the files have natively (the 10th percentile of the native rates), so
  at most 10% of the files are upsampled; a dataset at one rate keeps it. `max_sample_rate` caps it
  (downsampling is harmless and makes spectrograms cheaper).
- **Crop length: the 90th percentile of the clip lengths**, rounded up to a multiple of 100 ms, so at least
  90% of the clips are kept whole and padding stays proportionate (a 0.5 s dataset is not padded to 5 s).
  When lengths vary a lot (a tenth of the clips shorter than half the crop, so padding is more than half of
  their frames) the survey warns: padding then dominates those clips' statistics.

Every note the survey makes is also emitted as a `UserWarning`.
"""

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

__all__ = ["AudioSurvey", "survey_audio"]

UPSAMPLED_SHARE = 0.1  # at most this share of the files may be upsampled by the default sample rate
CROP_QUANTILE = 0.9  # at least this share of the clips fit the default crop whole
CROP_STEP_MS = 100  # the default crop is rounded up to a multiple of this
SHORT_CLIP_RATIO = 0.5  # warn when a tenth of the clips are shorter than this fraction of the crop


@dataclass(frozen=True, eq=False)  # numpy fields: compare surveys field by field
class AudioSurvey:
    """What `survey_audio` measured, per file, and the defaults it derives (see the module docstring).

    Attributes:
        files: the surveyed files (as strings), in the order given.
        sample_rates, frames, channels: per-file native sample rate (Hz), length (samples) and channel count.
        default_sample_rate (int): the rate to resample to (no upsampling of 90% of the files).
        default_crop_ms (int): the crop/pad length in milliseconds (90th percentile of lengths, 100 ms steps).
        notes: the warnings the survey emitted (mixed rates, upsampled files, widely varying lengths).
    """

    files: tuple
    sample_rates: np.ndarray
    frames: np.ndarray
    channels: np.ndarray
    default_sample_rate: int
    default_crop_ms: int
    notes: tuple = field(default=())

    @property
    def durations(self) -> np.ndarray:
        "Length of each clip in seconds."
        return self.frames / self.sample_rates

    def __repr__(self):
        d = self.durations
        rates = ", ".join(f"{r} Hz: {n}" for r, n in sorted(Counter(self.sample_rates.tolist()).items()))
        chans = ", ".join(f"{c}: {n}" for c, n in sorted(Counter(self.channels.tolist()).items()))
        return (
            f"AudioSurvey of {len(self.files)} files: rates {{{rates}}}, channels {{{chans}}}, "
            f"lengths {d.min():.2f}-{d.max():.2f} s (median {np.median(d):.2f} s); "
            f"default_sample_rate={self.default_sample_rate}, default_crop_ms={self.default_crop_ms}"
        )


def _info(fn):
    try:
        info = sf.info(fn)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        return fn, None, str(e)
    if info.frames <= 0:
        return fn, None, "no samples"
    return fn, (info.samplerate, info.frames, info.channels), None


def survey_audio(
    files: Iterable[str | os.PathLike],
    max_sample_rate: int | None = None,
    max_files: int | None = None,
    num_workers: int = 8,
    seed: int = 0,
) -> AudioSurvey:
    """Read the headers of `files` and derive the default sample rate and crop length.

    Args:
        files: audio file paths (`str`, `Path` or any path-like), e.g. `sorted(folder.glob('*.wav'))`.
        max_sample_rate (int or None): cap on the default sample rate.
        max_files (int or None): survey a random sample of this many files (seeded) instead of all.
        num_workers (int): threads reading headers.
        seed (int): seed of the sample when `max_files` is given.

    Returns:
        `AudioSurvey` with `.default_sample_rate` and `.default_crop_ms`.

    Raises:
        ValueError: no files, or files that cannot be read or hold no samples (named, up to five).

    Example:
        >>> import numpy as np, soundfile as sf, tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> for i, seconds in enumerate([0.4, 0.5, 0.6]):
        ...     sf.write(os.path.join(folder, f'{i}.wav'), np.zeros(int(8000 * seconds)), 8000)
        >>> s = survey_audio(sorted(os.path.join(folder, f) for f in os.listdir(folder)))
        >>> s.default_sample_rate, s.default_crop_ms
        (8000, 600)
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("survey_audio: no files to survey")
    if max_files is not None and len(files) > max_files:
        keep = np.random.default_rng(seed).choice(len(files), max_files, replace=False)
        files = [files[i] for i in sorted(keep)]
    with ThreadPoolExecutor(max(1, min(num_workers, len(files)))) as pool:
        results = list(pool.map(_info, files))
    bad = [f"{fn} ({err})" for fn, _, err in results if err is not None]
    if bad:
        raise ValueError(
            f"survey_audio: {len(bad)} of {len(files)} files cannot be used: "
            f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )
    rates, frames, channels = (np.array(col, dtype=np.int64) for col in zip(*(r for _, r, _ in results)))
    notes = []

    # Sample rate: the highest rate that all but UPSAMPLED_SHARE of the files reach natively.
    sample_rate = int(np.sort(rates)[int(UPSAMPLED_SHARE * len(rates))])
    if max_sample_rate is not None:
        sample_rate = min(sample_rate, int(max_sample_rate))
    if len(set(rates.tolist())) > 1:
        upsampled = int((rates < sample_rate).sum())
        notes.append(
            f"files have several sample rates ({', '.join(map(str, sorted(set(rates.tolist()))))} Hz); "
            f"default {sample_rate} Hz"
            + (f": {upsampled} files ({upsampled / len(rates):.0%}) will be upsampled" if upsampled else "")
        )

    # Crop: the CROP_QUANTILE quantile of the lengths (a measured length), rounded up to CROP_STEP_MS.
    ms = frames / rates * 1000
    quantile_ms = float(np.quantile(ms, CROP_QUANTILE, method="inverted_cdf"))
    crop_ms = CROP_STEP_MS * max(1, math.ceil(round(quantile_ms, 6) / CROP_STEP_MS))
    short_ms = float(np.quantile(ms, 0.1, method="inverted_cdf"))
    if short_ms < SHORT_CLIP_RATIO * crop_ms:
        notes.append(
            f"clip lengths vary a lot ({ms.min():.0f}-{ms.max():.0f} ms): a tenth of the clips are shorter than "
            f"{short_ms:.0f} ms, under half the default crop of {crop_ms} ms, so padding fills most of their frames"
        )
    for note in notes:
        warnings.warn(f"survey_audio: {note}", stacklevel=2)
    return AudioSurvey(tuple(files), rates, frames, channels, sample_rate, crop_ms, tuple(notes))
