"""`StatsRecorder.update` against `torch.var_mean` and the reference workflow's recorder, per batch."""

import torch

from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
from specnorm.stats import StatsRecorder

from .common import kernel_time, markdown_table, timeit


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


def cuda_kernels(fn):
    "CUDA kernels one call of `fn` launches (torch.profiler), after a warm-up call."
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def run(device="cpu", smoke=False):
    cuda = torch.device(device).type == "cuda"
    shapes = [(4, 1, 33, 51)] if smoke else [(64, 1, 201, 401)] + ([(256, 1, 201, 401)] if cuda else [])
    repeat = 3 if smoke else 9
    torch.manual_seed(0)
    rows = []
    for shape in shapes:
        x = (torch.randn(shape, device=device) * 20 - 50).contiguous()  # dB-like spectrogram batch
        for name, dims in (("global (0,2,3)", GLOBAL_AXES), ("per frequency (0,1,3)", CHANNEL_AXES)):
            rec, pooled = StatsRecorder(dims), PooledStdRecorder(dims)
            rec.update(x), pooled.update(x)  # steady state: every timed call folds into existing statistics
            base = timeit(lambda: torch.var_mean(x, dims, correction=0, keepdim=True), device, repeat=repeat)
            ours = timeit(lambda: rec.update(x), device, repeat=repeat)
            ref = timeit(lambda: pooled.update(x), device, repeat=repeat)
            row = [f"`{list(shape)}`, {name}", "1.00", f"{ours / base:.2f}", f"{ref / base:.2f}"]
            if cuda:
                row.append(str(cuda_kernels(lambda: rec.update(x))))
                gpu_base = kernel_time(lambda: torch.var_mean(x, dims, correction=0, keepdim=True))
                row.append(f"{kernel_time(lambda: rec.update(x)) / gpu_base:.2f}")
            rows.append(tuple(row))
    header = ("batch, dims", "torch.var_mean", "StatsRecorder.update", "reference recorder")
    header += ("CUDA kernels per update", "GPU time / var_mean's") if cuda else ()
    return (
        f"### StatsRecorder.update, {device}\n\nTime of one `update` on a float32 batch on {device}, "
        "as a multiple of one float32 `torch.var_mean` over the same batch and dims (lower is faster). "
        "`StatsRecorder` is exact at any finite magnitude (on the CPU values scaled by a power of two and a "
        "float64 combination; on CUDA two Triton kernels, per-tile float64 moments then their fold into the "
        "running state, `specnorm.kernel_moments`; NaN/Inf counted on the device, no host sync); the reference "
        "workflow's pooled-std recorder is float32 and counts batch items."
        + (
            " On CUDA, the kernels one `update` launches, counted with `torch.profiler`, and the GPU time of those "
            "kernels alone (no launch overhead) as a multiple of var_mean's."
            if cuda
            else ""
        )
        + "\n\n"
        + markdown_table(header, rows)
    )
