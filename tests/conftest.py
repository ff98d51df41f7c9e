"""Shared fixtures: the devices to test on, and synthetic audio written to `tmp_path`."""

import contextlib
import datetime
import os
import socket
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

# Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors (read when a kernel is defined)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    "Each device-aware test runs on the CPU, and on CUDA when present."
    return torch.device(request.param)


def tone(freq, sr=16000, seconds=1.0, amplitude=0.5, channels=1, phase=0.0):
    "A sine at `freq` Hz as float32 `[channels, samples]`."
    t = np.arange(round(sr * seconds)) / sr
    x = amplitude * np.sin(2 * np.pi * freq * t + phase)
    return np.repeat(x[None], channels, 0).astype(np.float32)


def write_audio(path, data, sr):
    "Write float `[channels, samples]` to `path` (format from the extension) and return the path."
    sf.write(path, np.asarray(data).T, sr)
    return path


def make_esc50_like(root, n_per_class=4, n_classes=4, sr=44100, seconds=1.0, folds=(1, 2, 3, 4, 5), seed=0):
    """A small ESC-50-shaped folder: `root/audio/*.wav` and `root/meta/esc50.csv`.

    Class k is a tone at 300 * (k + 1) Hz with a little noise; folds cycle through `folds`.
    """
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    rows = []
    for k in range(n_classes):
        for i in range(n_per_class):
            fn = f"{folds[(k * n_per_class + i) % len(folds)]}-{k}-{i}.wav"
            x = tone(300 * (k + 1), sr, seconds, amplitude=0.3) + 0.01 * rng.standard_normal((1, int(sr * seconds)))
            write_audio(root / "audio" / fn, x.astype(np.float32), sr)
            rows.append(
                dict(filename=fn, fold=folds[(k * n_per_class + i) % len(folds)], target=k, category=f"class{k}")
            )
    df = pd.DataFrame(rows)
    df.to_csv(root / "meta" / "esc50.csv", index=False)
    return df


@pytest.fixture
def esc50_like(tmp_path):
    "`(df, audio_path)` of a small ESC-50-shaped dataset at 44.1 kHz."
    df = make_esc50_like(tmp_path)
    return df, tmp_path / "audio"


# Reading a tensor's value on the host: each of these either copies device memory to the host or branches
# Python on a value, and on CUDA each waits for the queued kernels (a host sync).
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "__array__")


class HostReadError(AssertionError):
    "Code under `no_host_reads` read a tensor value on the host."


def count_calls(monkeypatch, owner, name: str, calls: list | None = None) -> list:
    "Wrap `owner.name` (for the test) so that each call appends 1 to `calls`; return `calls` (new if None)."
    calls = [] if calls is None else calls
    inner = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or inner(*a, **k))
    return calls


@pytest.fixture
def all_kernels(monkeypatch):
    "Every Triton kernel on CUDA tensors, the opt-in ones too (`specnorm.kernels`: `SPECNORM_TRITON=1`)."
    monkeypatch.setenv("SPECNORM_TRITON", "1")


@contextlib.contextmanager
def no_host_reads():
    """Fail the code under it when it reads a tensor value on the host (any device).

    Patches `torch.Tensor`'s value-reading methods (`HOST_READS`) and `torch.cuda.synchronize` to raise
    `HostReadError`; on CUDA it also sets `torch.cuda.set_sync_debug_mode("error")`, which catches the
    syncs hidden inside torch's own kernels (e.g. `nonzero`, a `.to('cpu')`).

    Example:
        with no_host_reads():
            y = transform(x)          # fails the test if `transform` calls .item(), bool(t), ...
    """
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    saved_sync = torch.cuda.synchronize

    def guard(name):
        def read(self, *args, **kwargs):
            raise HostReadError(f"host read: Tensor.{name} on a {tuple(self.shape)} {self.dtype} tensor")

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, guard(name))

    def sync(*args, **kwargs):
        raise HostReadError("host read: torch.cuda.synchronize")

    torch.cuda.synchronize = sync
    cuda = torch.cuda.is_available()
    if cuda:
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.cuda.synchronize = saved_sync
        if cuda:
            torch.cuda.set_sync_debug_mode(mode)


def free_port():
    "A TCP port on 127.0.0.1 that nothing listens on now (for a process group's rendezvous)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank, world, port, timeout_s):
    "Join a gloo process group on 127.0.0.1 (in a worker process); a short timeout turns a hang into an error."
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def run_ranks(worker, *args, world=2, deadline_s=240):
    """Run `worker(rank, world, port, *args)` in `world` spawned processes and wait for them all; a run that
    outlives `deadline_s` is killed and fails the test (no test hangs on a stuck collective)."""
    ctx = torch.multiprocessing.start_processes(
        worker, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.time() + deadline_s
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} gloo workers did not finish in {deadline_s} s")
