"""`StatsRecorder.update` against `torch.var_mean` and the reference workflow's recorder, per batch."""

import torch

from specnorm.stats import StatsRecorder

from .common import markdown_table, timeit


class PooledStdRecorder:
    """The recorder algorithm of the reference fastai audio workflow, written out as the baseline.

    It keeps a float32 mean and std and, per batch, pools the batch's mean and unbiased std
    weighting by batch items (not elements): n_old/(n_old+n) and n/(n_old+n) on the variances,
    plus n_old*n/(n_old+n)^2 times the squared difference of means, then a square root.
    """

    def __init__(self, red_dims):
        self.red_dims, self.nobservations = red_dims, 0

    def update(self, x):
        mean, std = x.mean(self.red_dims, keepdim=True), x.std(self.red_dims, keepdim=True)
        n = x.shape[0]
        if self.nobservations == 0:
            self.mean, self.std = mean, std
        else:
            m = float(self.nobservations)
            old = self.mean
            self.mean = m / (m + n) * old + n / (m + n) * mean
            var = m / (m + n) * self.std**2 + n / (m + n) * std**2 + m * n / (m + n) ** 2 * (old - mean) ** 2
            self.std = torch.sqrt(var)
        self.nobservations += n


def run(device="cpu", smoke=False):
    shape = (4, 1, 33, 51) if smoke else (64, 1, 201, 401)
    repeat = 3 if smoke else 9
    torch.manual_seed(0)
    x = (torch.randn(shape, device=device) * 20 - 50).contiguous()  # dB-like spectrogram batch
    rows = []
    for name, dims in (("global (0,2,3)", (0, 2, 3)), ("per frequency (0,1,3)", (0, 1, 3))):
        rec, pooled = StatsRecorder(dims), PooledStdRecorder(dims)
        rec.update(x), pooled.update(x)  # steady state: every timed call folds into existing statistics
        base = timeit(lambda: torch.var_mean(x, dims, correction=0, keepdim=True), device, repeat=repeat)
        ours = timeit(lambda: rec.update(x), device, repeat=repeat)
        ref = timeit(lambda: pooled.update(x), device, repeat=repeat)
        rows.append((name, "1.00", f"{ours / base:.2f}", f"{ref / base:.2f}"))
    return (
        f"### StatsRecorder.update\n\nTime of one `update` on a float32 `{list(shape)}` batch on {device}, "
        "as a multiple of one float32 `torch.var_mean` over the same batch and dims (lower is faster). "
        "`StatsRecorder` is exact (float64 combination, NaN/Inf counted on the device); the reference "
        "workflow's pooled-std recorder is float32 and counts batch items.\n\n"
        + markdown_table(("dims", "torch.var_mean", "StatsRecorder.update", "reference recorder"), rows)
    )
