"""When specnorm's Triton kernels run: the one switch of `kernel_affine`, `kernel_moments`, `kernel_pcen` and
`kernel_sliding`.

On CUDA, the per-batch work of `SpecNormalize`, `instance_norm`, `StatsRecorder.update`, `pcen` and
`sliding_norm` can run as a few hand-written Triton kernels (one read and one write of the batch where eager
PyTorch needs tens of kernels), and on the CPU as the eager code, which is also the kernels' reference. The
environment variable `SPECNORM_TRITON` chooses, read on every call (no host read of tensor values):

- unset: the kernels that a GPU session has run and measured (`MEASURED`: all four, on an H200, BENCHMARKS.md);
  a kernel added later stays eager by default, tested under Triton's interpreter only, until a GPU session
  has run its tests and timed it;
- `"1"`: every kernel, measured or not;
- `"0"`: none (the kill switch).

Triton ships with torch's Linux CUDA wheels; without it, without a C compiler (Triton builds its launcher with
one), and on GPUs it does not build for (compute capability below 7.0), everything runs eager. It is imported
only by the kernel modules, which specnorm imports when a CUDA tensor arrives.
"""

import functools
import importlib.util
import os
import shutil
import warnings

import torch

__all__ = ["MEASURED", "SWITCH", "kernels_on"]

SWITCH = "SPECNORM_TRITON"
MEASURED = frozenset({"affine", "moments", "pcen", "sliding"})  # tested and timed on a GPU (BENCHMARKS.md)


@functools.cache
def _triton_usable() -> bool:
    """Whether triton imports and can build its kernel launcher, which it compiles with the system's C compiler
    (`CC`, else gcc, else clang, as Triton looks for it) on first use: without one, the first batch would fail."""
    if importlib.util.find_spec("triton") is None:
        return False
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        warnings.warn(
            "specnorm: Triton needs a C compiler (CC, gcc or clang) to launch its kernels and none was found: "
            "the CUDA transforms run their eager PyTorch code",
            stacklevel=3,
        )
        return False
    return True


@functools.cache
def _triton_compiles_for(device_index: int) -> bool:
    "Triton builds for compute capability 7.0 (Volta) and later: older GPUs (a P100, a GTX 1080) run eager code."
    return torch.cuda.get_device_capability(device_index) >= (7, 0)


def kernels_on(x: torch.Tensor, kernel: str) -> bool:
    """Whether `kernel` (a `kernel_*` module's name: `"affine"`, `"moments"`, `"pcen"`, `"sliding"`) runs on `x`: a CUDA
    tensor on a GPU Triton builds for, triton importable, and `SPECNORM_TRITON` as the module docstring says.

    Example:
        >>> import torch
        >>> from specnorm.kernels import kernels_on
        >>> kernels_on(torch.zeros(3), "affine")  # a CPU tensor: the eager path
        False
    """
    if not x.is_cuda or not _triton_usable() or not _triton_compiles_for(x.device.index):
        return False
    switch = os.environ.get(SWITCH)
    return switch == "1" or (switch != "0" and kernel in MEASURED)
