"The one switch of the Triton kernels (`specnorm.kernels`): which kernels run on a CUDA tensor, per setting."

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from conftest import count_calls, no_host_reads

import specnorm.functional as F
from specnorm import kernels
from specnorm.audio import AudioSpectrogram
from specnorm.instance import InstanceSpecNorm
from specnorm.kernels import MEASURED, SWITCH, kernels_on
from specnorm.pcen import PCEN
from specnorm.sliding import SlidingSpecNorm

ALL = ("affine", "moments", "pcen", "sliding")
CUDA_LIKE = SimpleNamespace(is_cuda=True, device=SimpleNamespace(index=0))  # what the rule reads: no GPU needed


@pytest.mark.parametrize(
    "setting,expected",
    [(None, set(ALL)), ("1", set(ALL) | {"new"}), ("0", set()), ("yes", set(ALL))],
)
def test_the_switch_chooses_the_kernels(monkeypatch, setting, expected):
    monkeypatch.setattr(kernels, "_triton_usable", lambda: True)
    monkeypatch.setattr(kernels, "_triton_compiles_for", lambda index: True)
    if setting is None:
        monkeypatch.delenv(SWITCH, raising=False)
    else:
        monkeypatch.setenv(SWITCH, setting)
    assert {k for k in (*ALL, "new") if kernels_on(CUDA_LIKE, k)} == expected  # "new": a kernel not yet measured
    assert MEASURED == set(ALL)  # the kernels a GPU session tested and timed (BENCHMARKS.md)


def test_cpu_tensors_old_gpus_and_a_missing_triton_stay_eager(monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    assert not any(kernels_on(torch.zeros(2), k) for k in ALL)
    monkeypatch.setattr(kernels, "_triton_usable", lambda: True)
    capability = {0: (6, 0), 1: (7, 0)}  # a P100 beside a V100: Triton builds for the second only
    monkeypatch.setattr(kernels.torch.cuda, "get_device_capability", lambda index: capability[index])
    kernels._triton_compiles_for.cache_clear()
    try:
        on = [kernels_on(SimpleNamespace(is_cuda=True, device=SimpleNamespace(index=i)), "affine") for i in (0, 1)]
    finally:
        kernels._triton_compiles_for.cache_clear()
    assert on == [False, True]
    monkeypatch.setattr(kernels, "_triton_usable", lambda: False)
    assert not any(kernels_on(CUDA_LIKE, k) for k in ALL)


def test_without_a_c_compiler_triton_is_not_used_and_a_warning_says_why(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    kernels._triton_usable.cache_clear()
    try:
        with pytest.warns(UserWarning, match="needs a C compiler"):
            assert not kernels._triton_usable()
    finally:
        kernels._triton_usable.cache_clear()
    monkeypatch.setenv("CC", "cc")
    assert kernels._triton_usable() == (importlib.util.find_spec("triton") is not None)
    kernels._triton_usable.cache_clear()


BAD_VALUE = {"InstanceSpecNorm": float("nan"), "SlidingSpecNorm": float("inf"), "PCEN": -1.0}


@pytest.mark.parametrize(
    "make",
    [InstanceSpecNorm, lambda: InstanceSpecNorm((3,)), lambda: SlidingSpecNorm(40, norm_vars=True), PCEN],
    ids=["instance", "instance_per_row", "sliding", "pcen"],
)
def test_transforms_count_bad_batches_in_their_kernels(make, device, all_kernels, monkeypatch):
    """The statistics-free transforms mark a bad batch without a host read: on CUDA their kernel counts as it
    writes (no eager reduction queued), elsewhere `count_nonfinite`; `check()` names the first bad batch."""
    norm = make()
    name = type(norm).__name__
    reductions = count_calls(monkeypatch, F, "count_nonfinite")
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(3, 1, 12, 90, generator=g).to(device) + 0.1 for _ in range(3)]
    xs[1][2, 0, 5, 30] = BAD_VALUE[name]
    with no_host_reads():
        ys = [norm(AudioSpectrogram(x, sr=16000, hop_length=160, to_db=False)) for x in xs]
    assert len(reductions) == (0 if device.type == "cuda" and kernels._triton_usable() else 3)
    assert [bool(torch.isfinite(y).all()) for y in ys] == [
        True,
        name == "PCEN" and bool(torch.isfinite(ys[1]).all()),
        True,
    ]
    with pytest.raises(ValueError, match=rf"{name}: 1 of the 3 batches .* first is batch 1 .* \(3, 1, 12, 90\)"):
        norm.check()
    norm.check()  # started over
