"""The Triton sliding-window kernel against the per-frame float64 numpy loop of test_sliding, and its dispatch.

Without CUDA the launcher runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1); with
CUDA the same tests compile it, and the public `sliding_norm` on the `device` fixture takes the kernel path.
"""

import numpy as np
import pytest
import torch
from conftest import count_calls, no_host_reads
from test_kernel_pcen import compile_offline
from test_sliding import db_spec, numpy_sliding

from specnorm import kernel_sliding
from specnorm.functional import sliding_norm
from specnorm.kernel_sliding import sliding_rows, use_kernel

pytest.importorskip("triton")  # torch's Linux wheels bring it; elsewhere these tests have nothing to run
pytestmark = pytest.mark.usefixtures("all_kernels")  # on CUDA whatever the environment says

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the launcher runs (interpreted on the CPU)
RULES = [(True, 100)] + [(False, m) for m in (1, 5, 20)]  # (center, min_window)


def launch(x, window, center=True, norm_vars=False, min_window=100, eps=1e-5):
    return sliding_rows(torch.as_tensor(x).to(DEVICE), window, center, norm_vars, min_window, eps).cpu().numpy()


def check(x, window, center, norm_vars, min_window):
    ref = numpy_sliding(x, window, center, norm_vars, min_window)
    np.testing.assert_allclose(
        launch(x, window, center, norm_vars, min_window), ref, rtol=1e-5, atol=1e-4, err_msg=f"{window=} {center=}"
    )


@pytest.mark.parametrize("n_frames", [1, 2, 5, 32, 33, 130])  # tiles of 32 frames (the default CHUNK), 128 before
@pytest.mark.parametrize("center,min_window", RULES)
@pytest.mark.parametrize("norm_vars", [False, True])
def test_launcher_matches_the_loop(n_frames, center, min_window, norm_vars):
    "Windows shorter than, about as long as and longer than the clip; 51 rows, a ragged last block of 16."
    x = db_spec((1, 3, 17, n_frames), seed=n_frames)
    for window in (1, 2, 7, 64, 200):
        check(x, window, center, norm_vars, min_window)


@pytest.mark.parametrize("rows,chunk", [(8, 64), (32, 64), (16, 128)])
def test_other_launch_settings(rows, chunk, monkeypatch):
    "The settings benchmarks/gpu_kernels.py compares give the same results."
    monkeypatch.setattr(kernel_sliding, "ROWS", rows)
    monkeypatch.setattr(kernel_sliding, "CHUNK", chunk)
    x = db_spec((1, 3, 17, 300), seed=3)
    for center, min_window in RULES[:2]:
        check(x, 100, center, True, min_window)


@pytest.mark.slow
def test_every_edge_rule_against_the_loop():
    rng = np.random.default_rng(6)
    for n in (1, 2, 3, 5, 8, 13, 63, 129):
        x = (rng.standard_normal((1, 2, n)) * 5 - 40).astype(np.float32)
        for window in (1, 2, 3, 4, 7, 15, 64, 65):
            for center, min_window in [(True, 100)] + [(False, m) for m in (1, 2, 5, 9, 20)]:
                for norm_vars in (False, True):
                    check(x, window, center, norm_vars, min_window)


@pytest.mark.parametrize("window,center,min_window", [(2, False, 1), (300, True, 100), (30, False, 100)])
@pytest.mark.parametrize("norm_vars", [False, True])
def test_long_drifting_clip_stays_accurate(window, center, min_window, norm_vars):
    "3000 frames with a 40 dB level drift: float32 rounding of the dB values, the eager path's bound."
    x = db_spec((1, 1, 3, 3000), seed=4)
    err = np.abs(
        launch(x, window, center, norm_vars, min_window) - numpy_sliding(x, window, center, norm_vars, min_window)
    )
    assert err.max() < (5e-5 if norm_vars else 2e-5)


def test_constant_rows_give_exact_zeros_and_nan_stays_in_its_windows():
    x = np.full((1, 1, 3, 100), -42.5, np.float32)
    x[0, 0, 1] = np.linspace(-60, -20, 100)
    x[0, 0, 2, 50] = np.nan
    out = launch(x, 20, norm_vars=True)
    assert (out[0, 0, 0] == 0).all()
    np.testing.assert_allclose(out[0, 0, 1], numpy_sliding(x[:, :, 1], 20, norm_vars=True)[0, 0], rtol=1e-5, atol=1e-4)
    # the running window sums carry the NaN from the first window that holds it (frame 41 of a centred 20-frame
    # window) to the row's end; frames before it are exact (the eager path's row mean makes the whole row NaN)
    assert (out[0, 0, 2, :41] == 0).all() and np.isnan(out[0, 0, 2, 41:]).all()


@pytest.mark.parametrize("norm_vars", [False, True])
def test_kernel_counts_nonfinite_outputs(norm_vars):
    x = torch.from_numpy(db_spec((2, 1, 4, 80), seed=3))
    x[1, 0, 2, 70] = float("inf")
    count = torch.zeros(1, dtype=torch.float64, device=DEVICE)
    y = sliding_rows(x.to(DEVICE), 20, True, norm_vars, 100, 1e-5, count).cpu()
    assert count.item() == (~torch.isfinite(y)).sum().item() > 0
    sliding_rows(x[:1].to(DEVICE), 20, True, norm_vars, 100, 1e-5, count)  # a finite batch adds nothing
    assert count.item() == (~torch.isfinite(y)).sum().item()


def test_variance_beyond_float32_stays_exact():
    "Values of 1e20: the kernel's variance and inverse square root are float64."
    x = db_spec((1, 1, 3, 80), seed=6) * np.float32(2e18)
    ref = numpy_sliding(x, 9, True, True, 100)
    np.testing.assert_allclose(launch(x, 9, True, True, 100), ref, rtol=1e-4, atol=1e-4)


def test_launcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="float32"):
        sliding_rows(torch.zeros(2, 5, dtype=torch.float64), 3, True, False, 100, 1e-5)
    with pytest.raises(ValueError, match="at least 1 frame"):
        sliding_rows(torch.zeros(2, 5), 0, True, False, 100, 1e-5)


# the public path: `sliding_norm` takes the kernel on CUDA, the eager path elsewhere


@pytest.fixture
def launches(monkeypatch):
    "Counts the kernel launches made through `sliding_norm`."
    return count_calls(monkeypatch, kernel_sliding, "sliding_rows")


@pytest.mark.parametrize("center,min_window", RULES[:2])
@pytest.mark.parametrize("norm_vars", [False, True])
def test_public_sliding_norm_on_each_device(center, min_window, norm_vars, device, launches):
    x = db_spec((2, 1, 20, 150), seed=9)
    xd = torch.from_numpy(x).to(device)  # a copy from pageable host memory syncs: outside the guard
    with no_host_reads():
        out = sliding_norm(xd, 30, center, norm_vars, min_window)
    assert out.dtype == torch.float32 and out.shape == x.shape
    ref = numpy_sliding(x, 30, center, norm_vars, min_window)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-5, atol=1e-4)
    assert len(launches) == (device.type == "cuda")


def test_what_stays_eager(device, launches, monkeypatch):
    "float64 input and SPECNORM_TRITON=0 keep the eager path."
    x = torch.from_numpy(db_spec((1, 1, 4, 60))).to(device)
    assert sliding_norm(x.double(), 20).dtype == torch.float64
    monkeypatch.setenv("SPECNORM_TRITON", "0")
    assert not use_kernel(x)
    sliding_norm(x, 20)
    assert launches == []
    monkeypatch.setenv("SPECNORM_TRITON", "1")
    assert use_kernel(x) == (device.type == "cuda")


COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from specnorm import kernel_sliding as k

ints = dict.fromkeys(("n_rows", "n_frames", "window", "min_window", "n_before"), "i32")
for center in (True, False):
    for norm_vars in (True, False):
        flags = dict(CENTER=center, NORM_VARS=norm_vars, HAS_COUNT=center, ROWS=k.ROWS, CHUNK=k.CHUNK)
        signature = dict(x_ptr="*fp32", out_ptr="*fp32", **ints, eps2="fp32", count_ptr="*fp64")
        signature.update(dict.fromkeys(flags, "constexpr"))
        source = ASTSource(fn=k._sliding_kernel, signature=signature, constexprs=flags)
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=k.NUM_WARPS))
        assert kernel.asm["cubin"], (center, norm_vars)
print("compiled")
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_a_gpu():
    "Centred and causal, with and without variances: Triton to PTX to sm_90 machine code (ptxas)."
    compile_offline(COMPILE)
