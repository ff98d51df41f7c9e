"""Drift monitoring: are the inputs a deployed model sees still distributed like its training set?

A normalizer bakes in the training set's statistics. When the recording chain changes (another
microphone, a louder band, a new noise floor) the inputs drift away from them and the model sees
data out of its domain, which the article this library grew from names as the risk of channel
normalization in deployment. `NormDriftMonitor` records the statistics of new data with a
`StatsRecorder` and compares them, per frequency channel, with the training statistics: the
standardized mean shift `d = (mean_new - mean_train) / std_train`, the variance ratio
`r = var_new / var_train`, and their Gaussian Kullback-Leibler divergence
`KL = (r - 1 - log r + d**2) / 2` (nats; 0 when nothing changed; `specnorm.functional.gaussian_kl`).
Both standard deviations are floored as `SpecNormalize` floors std (`specnorm.functional.floor_std`,
`eps * |mean_train|`), so a constant training channel compared with new data that jitters by 1e-3 dB
scores ~0, not 1e30. The summary score is the mean KL over channels; `threshold` (0.1 by default:
a shift of 0.45 std, or a variance ratio of 1.6, in every channel) decides what is flagged.
"""

import copy
import warnings
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.torch_core import TensorImageBase

from .distributed import is_distributed, rank
from .functional import CHANNEL_AXES, SPEC_STD_EPS, floor_std, gaussian_kl, valid_mask
from .normalize import SpecNormalize
from .progress import progress_bar
from .stats import StatsRecorder

__all__ = ["DriftReport", "NormDriftMonitor"]

DRIFT_THRESHOLD = 0.1


@dataclass
class DriftReport:
    """Per-channel drift of new data against the training statistics (see the module docstring).

    Attributes:
        shift: standardized mean shift per channel (numpy array).
        var_ratio: variance ratio per channel.
        kl: Gaussian KL divergence per channel, in nats.
        score: mean of `kl`; flagged: `score > threshold`.
        frequencies: Hz of each channel, when known.
    """

    shift: np.ndarray
    var_ratio: np.ndarray
    kl: np.ndarray
    score: float
    threshold: float
    frequencies: np.ndarray = None

    @property
    def flagged(self):
        return self.score > self.threshold

    def __str__(self):
        worst = int(np.argmax(self.kl))
        where = f"{self.frequencies[worst]:.0f} Hz" if self.frequencies is not None else f"channel {worst}"
        return (
            f"drift score {self.score:.3g} nats ({'above' if self.flagged else 'within'} threshold "
            f"{self.threshold:g}); worst at {where}: shift {self.shift[worst]:+.2f} std, "
            f"variance ratio {self.var_ratio[worst]:.2f}"
        )

    def plot(self, ax=None, figsize=(7, 3)):
        "Standardized shift and log2 variance ratio over frequency (or channel index)."
        ax = ax if ax is not None else plt.subplots(figsize=figsize)[1]
        x = self.frequencies if self.frequencies is not None else np.arange(len(self.shift))
        ax.plot(x, self.shift, label="mean shift (std)")
        ax.plot(x, np.log2(self.var_ratio), label="log2 variance ratio")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("frequency (Hz)" if self.frequencies is not None else "channel")
        ax.set_title(str(self))
        ax.legend()
        return ax


def _find_normalizer(dl):
    return next((t for t in getattr(getattr(dl, "after_batch", None), "fs", []) if isinstance(t, SpecNormalize)), None)


class NormDriftMonitor(Callback):
    """Compare the statistics of validation, `get_preds` or deployment data with the training statistics.

    As a fastai `Callback`, it records every batch the model sees outside training (validation,
    `get_preds`, `predict`) and, after each such pass, builds a `DriftReport` (`.report`) and warns
    when its score is above `threshold`. On its own, `scan(dl)` does the same over any DataLoader.
    Batches that went through a `SpecNormalize` are recorded denormalized, in the training units.
    Padded frames (of batches carrying `lengths`, see `AudioToSpec`) are left out, as in the training statistics.

    Args:
        reference: the training statistics, a `StatsRecorder` (per channel, `red_dims=(0, 1, 3)`, for a
            per-channel comparison). Default: the mean/std of the `SpecNormalize` in the pipeline.
        red_dims: dims the new data are reduced over (`(0, 1, 3)`: one statistic per frequency row); without
            `reference`, the `axes` of the pipeline's `SpecNormalize`, so like is compared with like.
        threshold (float): mean KL divergence (nats) above which the report is flagged.
        warn (bool): issue a `UserWarning` when flagged.
        eps (float): relative floor on both stds (`floor_std`, as `SpecNormalize` floors std).

    Shape:
        spectrogram batches `[B, C, F, T]`.

    Example:
        >>> import torch
        >>> train = StatsRecorder((0, 1, 3)).update(torch.randn(64, 1, 8, 50))
        >>> monitor = NormDriftMonitor(reference=train, warn=False)
        >>> monitor.scan([torch.randn(16, 1, 8, 50)]).flagged
        False
        >>> monitor.scan([torch.randn(16, 1, 8, 50) + 2]).flagged
        True
    """

    order = 50  # after the batch exists, independent of other callbacks

    def __init__(
        self,
        reference: StatsRecorder | SpecNormalize | None = None,
        red_dims: tuple[int, ...] = CHANNEL_AXES,
        threshold: float = DRIFT_THRESHOLD,
        warn: bool = True,
        eps: float = SPEC_STD_EPS,
    ):
        self.reference, self.red_dims, self.threshold, self.warn = reference, tuple(red_dims), threshold, warn
        self.eps = eps
        self.new_stats, self.report, self.normalizer = None, None, None

    # -- recording -----------------------------------------------------------------------------------
    def reset(self, normalizer=None):
        "Start a new recording; batches are denormalized with `normalizer` (a `SpecNormalize`) if given."
        # Compared with the normalizer's own statistics, the new ones must be reduced the same way.
        dims = normalizer.axes if normalizer is not None and self.reference is None else self.red_dims
        self.new_stats, self.normalizer = StatsRecorder(dims), normalizer
        return self

    def update(self, x):
        "Fold in a batch (denormalized first when a normalizer was found)."
        if self.new_stats is None:
            self.reset()
        mask = valid_mask(x)  # padded frames do not count (read before decoding, which keeps no metadata)
        if self.normalizer is not None:
            # fastai's Learner hands callbacks `xb` as plain tensors, which the normalizer's type
            # dispatch would pass through untouched: re-type it so `decode` (the exact inverse) applies.
            meta = dict(getattr(x, "__dict__", {}))
            x = self.normalizer.decode(x.as_subclass(TensorImageBase))
            x.__dict__.update(meta)  # spectrogram settings, for the report's frequency axis
        self.new_stats.update(x, mask=mask)
        return self

    def scan(self, dl, progress: bool = False) -> DriftReport:
        "Record every batch of `dl` (any iterable of batches or `(x, y)` tuples) and return the `DriftReport`."
        self.reset(_find_normalizer(dl))
        with torch.no_grad():
            for b in progress_bar(dl, label="drift scan", unit="batches", show=progress):
                self.update(b[0] if isinstance(b, (tuple, list)) else b)
        return self.compare()

    # -- fastai callback events ------------------------------------------------------------------------
    def before_validate(self):
        self.reset(_find_normalizer(self.dl))

    def after_pred(self):
        if not self.training:
            self.update(self.xb[0])

    def after_validate(self):
        if self.new_stats is not None and self.new_stats.nbatches:
            self.compare()

    # -- comparing ----------------------------------------------------------------------------------
    def _reference_stats(self):
        if isinstance(self.reference, StatsRecorder):
            return self.reference.mean.cpu(), self.reference.var.cpu()
        norm = self.normalizer or (self.reference if isinstance(self.reference, SpecNormalize) else None)
        if norm is None or not norm.has_stats:
            raise ValueError(
                "NormDriftMonitor needs training statistics: pass reference=StatsRecorder, or use it "
                "on data that goes through a SpecNormalize with statistics"
            )
        return norm.mean, norm.std.square()

    def compare(self) -> DriftReport:
        """The `DriftReport` of the data recorded so far (also kept as `.report`). Under torch.distributed
        it covers every rank's data (every rank must call it: it all-reduces), and only rank 0 warns."""
        ref_mean, ref_var = (t.double() for t in self._reference_stats())
        # Under torch.distributed each rank recorded its share: report on all of them (a collective).
        new = copy.deepcopy(self.new_stats).all_reduce() if is_distributed() else self.new_stats
        new_mean, new_var = new.mean.double().cpu(), new.var.double().cpu()
        try:
            torch.broadcast_shapes(ref_mean.shape, new_mean.shape)
        except RuntimeError:
            raise ValueError(
                f"NormDriftMonitor: the new data's statistics have shape {tuple(new_mean.shape)} but the training "
                f"statistics have shape {tuple(ref_mean.shape)}: a different number of channels (frequency rows)? "
                "Compare spectrograms made with the same settings"
            ) from None
        std_ref = floor_std(ref_mean, ref_var.sqrt(), self.eps)
        shift = (new_mean - ref_mean) / std_ref
        ratio = (floor_std(ref_mean, new_var.sqrt(), self.eps) / std_ref).square()
        kl = gaussian_kl(new_mean, new_var, ref_mean, ref_var, self.eps)
        shift, ratio, kl = (t.flatten().numpy() for t in torch.broadcast_tensors(shift, ratio, kl))
        self.report = DriftReport(shift, ratio, kl, float(kl.mean()), self.threshold, new.frequencies())
        if self.warn and self.report.flagged and rank() == 0:
            warnings.warn(f"NormDriftMonitor: {self.report}", stacklevel=2)
        return self.report

    def updated_stats(self, mode="merge"):
        """Statistics for re-deployment: the training recorder merged with the new data (`'merge'`)
        or the new data alone (`'replace'`). Merging needs `reference` to be a `StatsRecorder`."""
        if mode == "replace":
            return self.new_stats
        if mode != "merge":
            raise ValueError(f"mode must be 'merge' or 'replace', not {mode!r}")
        if not isinstance(self.reference, StatsRecorder):
            raise ValueError("merging needs the training statistics as a StatsRecorder (reference=...)")
        return self.reference + self.new_stats
