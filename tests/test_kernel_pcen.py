"""The Triton PCEN kernel against the eager `pcen` in float64 and `librosa.pcen`, and its dispatch.

Without CUDA the launcher runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1); with
CUDA the same tests compile it, and the public `pcen` on the `device` fixture takes the kernel path.
"""

import librosa
import numpy as np
import pytest
import torch
from conftest import count_calls, no_host_reads

from specnorm import kernel_pcen
from specnorm.functional import PCEN_DEFAULTS, pcen, pcen_smoothing_coef
from specnorm.kernel_pcen import pcen_rows, use_kernel
from specnorm.pcen import TrainablePCEN

pytest.importorskip("triton")  # torch's Linux wheels bring it; elsewhere these tests have nothing to run
pytestmark = pytest.mark.usefixtures("all_kernels")  # on CUDA whatever the environment says

RTOL = 1e-5  # float32 math against the float64 reference: a few ulp per step, and the smoother's rounding
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the launcher runs (interpreted on the CPU)


def energies(shape, seed=0):
    "Positive energies spanning six decades per row, with a loud stretch in the middle of time."
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 10 ** (6 * torch.rand(shape[:-1] + (1,), generator=g) - 3)
    t = shape[-1]
    x[..., t // 3 : t // 2] *= 30
    return x.float()


def launch(x, b=None, gain=PCEN_DEFAULTS["gain"], bias=PCEN_DEFAULTS["bias"], power=PCEN_DEFAULTS["power"],
           eps=PCEN_DEFAULTS["eps"]):  # fmt: skip
    "The launcher with `pcen`'s defaults, on DEVICE, back on the CPU."
    b = pcen_smoothing_coef() if b is None else b
    on = lambda v: v.to(DEVICE) if torch.is_tensor(v) else v
    return pcen_rows(x.to(DEVICE), on(b), on(gain), on(bias), on(power), eps).cpu()


def reference(x, **params):
    "The eager pcen in float64 (per-channel tensors as float64 too)."
    return pcen(x.double(), **{k: v.double() if torch.is_tensor(v) else v for k, v in params.items()})


SHAPES = [
    (1, 1),  # one value
    (1, 1, 3, 1),  # one frame
    (1, 1, 5, 64),  # exactly one tile of frames
    (2, 1, 9, 65),  # one frame more than a tile, odd F
    (1, 3, 17, 130),  # 51 rows: a ragged last block of rows
    (2, 16, 3),  # 32 rows: whole blocks
]
PARAMS = [
    {},
    dict(gain=0.8, bias=10.0, power=0.25, eps=1e-3, b=0.3),
    dict(power=0.0),
    dict(bias=0.0),
    dict(bias=0.0, power=0.0),
    dict(b=1.0),
    dict(b=0.0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_launcher_matches_eager_float64(shape, params):
    x = energies(shape)
    out = launch(x, **params)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), reference(x, **params), rtol=RTOL, atol=0)


@pytest.mark.parametrize("params", PARAMS[:4], ids=str)
def test_launcher_matches_librosa(params):
    x = energies((2, 1, 24, 150), seed=1)
    ref = librosa.pcen(x.numpy(), axis=-1, **{"b": pcen_smoothing_coef(), **params})
    np.testing.assert_allclose(launch(x, **params).numpy(), ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("n_values", [1, 7])
def test_per_channel_parameters(n_values):
    "Per-channel gain, bias, power and b of F values (each row reads its channel's), or of 1 value."
    x = energies((2, 1, 7, 70), seed=2)
    g = torch.Generator().manual_seed(3)
    gain, bias, power = (torch.rand(n_values, generator=g) * s + o for s, o in ((0.5, 0.5), (5, 0.5), (0.5, 0.1)))
    b = torch.rand(n_values, generator=g) * 0.5 + 0.01
    out = launch(x, b=b, gain=gain, bias=bias, power=power)
    torch.testing.assert_close(out.double(), reference(x, gain=gain, bias=bias, power=power, b=b), rtol=RTOL, atol=0)
    # each channel differs: a per-channel b of [b0, b0, ...] would not match this
    if n_values > 1:
        assert not torch.allclose(out, launch(x, b=b[0].item(), gain=gain, bias=bias, power=power))


@pytest.mark.parametrize("rows,chunk", [(8, 64), (32, 64), (16, 128)])
def test_other_launch_settings(rows, chunk, monkeypatch):
    "The settings benchmarks/gpu_kernels.py compares give the same results."
    monkeypatch.setattr(kernel_pcen, "ROWS", rows)
    monkeypatch.setattr(kernel_pcen, "CHUNK", chunk)
    x = energies((1, 3, 17, 130))
    torch.testing.assert_close(launch(x).double(), reference(x), rtol=RTOL, atol=0)


def test_nan_propagates_forward_in_its_row_only():
    x = energies((1, 1, 4, 70), seed=4)
    x[0, 0, 2, 40] = float("nan")
    out = launch(x)
    assert out[0, 0, 2, 40:].isnan().all()
    # the recursion is causal: before the NaN, the output is that of the clean prefix (the eager CPU path, in
    # chunks of matrix products, spreads a NaN over its chunk, so it is no reference here)
    torch.testing.assert_close(out[..., :40].double(), reference(x[..., :40]), rtol=RTOL, atol=0)
    torch.testing.assert_close(out[:, :, [0, 1, 3]].double(), reference(x[:, :, [0, 1, 3]]), rtol=RTOL, atol=0)


def test_kernel_counts_negative_inputs_and_nonfinite_outputs():
    x = energies((2, 1, 6, 90))
    x[0, 0, 1, 3], x[1, 0, 5, 89], x[1, 0, 0, 40] = -1.0, float("nan"), float("inf")
    count = torch.zeros(1, dtype=torch.float64, device=DEVICE)
    b = pcen_smoothing_coef()
    y = pcen_rows(x.to(DEVICE), b, 0.98, 2.0, 0.5, 1e-6, count).cpu()
    # the negative input's output may be finite or not; every non-finite output and the negative input count
    bad = (~torch.isfinite(y) | (x < 0)).sum().item()
    assert bad >= 3 and count.item() == bad
    pcen_rows(energies((2, 1, 6, 90), seed=1).to(DEVICE), b, 0.98, 2.0, 0.5, 1e-6, count)  # a good batch adds 0
    assert count.item() == bad


def test_launcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="float32"):
        pcen_rows(torch.rand(3, 8, dtype=torch.float64), 0.1, 1.0, 2.0, 0.5, 1e-6)
    with pytest.raises(ValueError, match=r"gain has 3 values; expected 1 or F = 4"):
        pcen_rows(torch.rand(4, 8), 0.1, torch.ones(3), 2.0, 0.5, 1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        pcen_rows(torch.rand(4, 0), 0.1, 1.0, 2.0, 0.5, 1e-6)


# the public path: `pcen` takes the kernel on CUDA (when use_kernel allows), the eager path elsewhere


@pytest.fixture
def launches(monkeypatch):
    "Counts the kernel launches made through `pcen`."
    return count_calls(monkeypatch, kernel_pcen, "pcen_rows")


@pytest.mark.parametrize("params", PARAMS[:4], ids=str)
def test_public_pcen_matches_librosa_on_each_device(params, device, launches):
    x = energies((2, 1, 24, 150), seed=5)
    ref = librosa.pcen(x.numpy(), sr=16000, hop_length=160, axis=-1, **params)
    out = pcen(x.to(device), sr=16000, hop_length=160, **params)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-4, atol=0)
    assert len(launches) == (device.type == "cuda")


def test_public_pcen_has_no_host_reads(device, launches):
    x = energies((2, 1, 24, 100)).to(device)
    gain, b = torch.full((24,), 0.9, device=device), torch.full((24,), 0.05, device=device)
    expected = pcen(x.double(), gain=gain.double(), b=b.double())
    with no_host_reads():
        out = pcen(x, gain=gain, b=b)
    torch.testing.assert_close(out.double(), expected, rtol=RTOL, atol=0)
    assert len(launches) == (device.type == "cuda")


def test_what_stays_eager(device, launches, monkeypatch):
    "max_size > 1, float64 input, training (gradients), and the SPECNORM_TRITON=0 kill switch keep the eager path."
    x = energies((1, 1, 8, 50)).to(device)
    pcen(x, max_size=3), pcen(x.double())
    frontend = TrainablePCEN(8).to(device)
    frontend(x).sum().backward()
    assert frontend.log_gain.grad is not None and launches == []
    monkeypatch.setenv("SPECNORM_TRITON", "0")
    assert not use_kernel(x)
    torch.testing.assert_close(pcen(x).double(), reference(x), rtol=RTOL, atol=0)
    assert launches == []
    monkeypatch.setenv("SPECNORM_TRITON", "1")
    with torch.no_grad():  # inference: the kernel on CUDA
        frontend(x)
    assert use_kernel(x) == (device.type == "cuda") and len(launches) == (device.type == "cuda")


def test_use_kernel_wants_parameters_on_the_device_with_1_or_f_values(device):
    x = torch.rand(2, 6, 10, device=device)
    assert use_kernel(x, 0.5, torch.ones(6, device=device), torch.ones(1, device=device)) == (device.type == "cuda")
    assert not use_kernel(x, torch.ones(5, device=device))  # eager pcen raises its broadcasting error
    assert not use_kernel(x.cpu(), 0.5) and not use_kernel(x.half())
    if device.type == "cuda":
        assert not use_kernel(x, torch.ones(6))  # a parameter on another device: eager pcen raises torch's error


# compiled for a GPU without one: the code the interpreter runs must also lower to PTX and machine code

COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from specnorm import kernel_pcen as k

ints = dict.fromkeys(("n_rows", "n_frames", "n_freq", "b_step", "gain_step", "bias_step", "power_step"), "i32")
for vec, mode, chunk, count in [(False, 0, 64, True), (True, 0, 64, False), (False, 1, 16, True), (True, 2, 64, True)]:
    params = dict.fromkeys(("b", "gain", "bias", "power"), "*fp32" if vec else "fp32")
    flags = dict(B_VEC=vec, G_VEC=vec, S_VEC=vec, P_VEC=vec, MODE=mode, HAS_COUNT=count, ROWS=k.ROWS, CHUNK=chunk)
    signature = dict(x_ptr="*fp32", out_ptr="*fp32", **ints, **params, eps="fp32", count_ptr="*fp64")
    signature.update(dict.fromkeys(flags, "constexpr"))
    source = ASTSource(fn=k._pcen_kernel, signature=signature, constexprs=flags)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=k.NUM_WARPS))
    assert kernel.asm["cubin"], (vec, mode, chunk)
print("compiled")
"""


def compile_offline(script):
    "Run `script` in a fresh interpreter with Triton's compiler (no TRITON_INTERPRET); skip without its CUDA backend."
    import os
    import subprocess
    import sys
    from pathlib import Path

    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's CUDA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_a_gpu():
    "Each output formula, numbers and per-channel tensors, a short tile: Triton to PTX to sm_90 machine code (ptxas)."
    compile_offline(COMPILE)


def test_gpu_benchmarks_run_at_tiny_sizes(device):
    "benchmarks/gpu_kernels.py cannot rot: each function runs (kernel rows on CUDA only) and gives ratios."
    from benchmarks.gpu_kernels import bench_pcen, bench_sliding

    pcen_rows_ = bench_pcen(device, batches=(1,), shape=(1, 8, 20), settings=((16, 64, 8),))
    sliding_rows_ = bench_sliding(device, batches=(1,), shape=(1, 8, 20), window=5, settings=((16, 64, 8),))
    assert len(pcen_rows_) == 1 + (device.type == "cuda") and len(sliding_rows_) == 2 * len(pcen_rows_)
    for _, ratio, gpu in pcen_rows_ + sliding_rows_:
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        assert gpu == "-" if device.type == "cpu" else float(gpu[:-1]) > 0
