"""Speed of the statistics-free transforms (InstanceSpecNorm, SlidingSpecNorm, ShortTimeAudioNormalize,
PCEN) against plain reference implementations of the same computation, timed in the same call."""

from contextlib import contextmanager

import librosa
import numpy as np
import torch
import torchaudio.functional as AF

from .common import kernel_time, markdown_table, timeit

SR, HOP = 16000, 160


def instance_loop(x):
    "One clip at a time, float32 torch: the plain way to write per-clip normalization."
    return torch.stack([(c - c.mean((1, 2), keepdim=True)) / c.std((1, 2), correction=0, keepdim=True) for c in x])


def rms_window_loop(x, window, hop):
    "Short-time RMS one window at a time in numpy, then `np.interp` to every sample."
    n = x.shape[-1]
    nodes = np.unique(np.r_[np.arange(0, n, hop), n - 1])
    rms = np.stack(
        [np.sqrt((x[..., max(0, min(t - window // 2, n - window)) :][..., :window] ** 2).mean(-1)) for t in nodes], -1
    ).reshape(-1, len(nodes))
    env = np.stack([np.interp(np.arange(n), nodes, r) for r in rms]).reshape(x.shape)
    return x / np.maximum(env, 1e-4)


@contextmanager
def torch_threads(n):
    "Run the block with `n` torch threads (None: leave the setting alone), then restore it."
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(device="cpu", smoke=False):
    from specnorm.audio import AudioSpectrogram, AudioTensor
    from specnorm.instance import InstanceSpecNorm
    from specnorm.pcen import PCEN
    from specnorm.sliding import ShortTimeAudioNormalize, SlidingSpecNorm

    b, f, t, seconds = (2, 16, 50, 0.1) if smoke else (64, 128, 500, 5.0)
    repeat = 2 if smoke else 7
    gen = torch.Generator().manual_seed(0)
    db = torch.randn(b, 1, f, t, generator=gen) * 10 - 50
    energy = torch.rand(b, 1, f, t, generator=gen) ** 4 * 1e3
    wave = torch.randn(b, 1, int(SR * seconds), generator=gen) * torch.linspace(0.01, 1, int(SR * seconds))
    db = db.to(device)
    spec = AudioSpectrogram(db, sr=SR, hop_length=HOP, to_db=True)
    lin = AudioSpectrogram(energy.to(device), sr=SR, hop_length=HOP, to_db=False)
    audio = AudioTensor(wave.to(device), sr=SR)
    time = lambda fn, dev=device: timeit(fn, device=dev, repeat=repeat, warmup=1)

    # Each transform made once, as a pipeline makes it (its NaN/Inf marks buffer is allocated on the first batch).
    instance, sliding, pcen = InstanceSpecNorm(), SlidingSpecNorm(window=300), PCEN()
    rows = []
    ours = time(lambda: instance(spec))
    rows.append(("InstanceSpecNorm()", "per-clip loop, float32 torch", time(lambda: instance_loop(db)) / ours))
    rows.append(
        (
            "InstanceSpecNorm()",
            "one vectorised float32 expression",
            time(lambda: (db - db.mean((2, 3), keepdim=True)) / db.std((2, 3), keepdim=True)) / ours,
        )
    )
    # The per-frame loop runs on one core; on CPU each pair is also timed with one torch thread, which
    # compares the work done (and stays meaningful on a machine whose other cores are busy).
    thread_counts = [None, 1] if device == "cpu" else [None]
    kaldi_port = getattr(AF, "sliding_window_cmn", None)  # a per-frame loop; rows skipped if absent
    for clips, norm_vars in [(b, False), (b, True), (1, False)] if kaldi_port else []:
        kaldi_layout = db[:clips].transpose(-1, -2).contiguous()
        for threads in thread_counts:
            with torch_threads(threads):
                ours = time(lambda: SlidingSpecNorm(window=300, norm_vars=norm_vars)(spec[:clips]))
                base = time(lambda: kaldi_port(kaldi_layout, 300, center=True, norm_vars=norm_vars))
            rows.append(
                (
                    f"SlidingSpecNorm(300, norm_vars={norm_vars}), {clips} clip{'s' * (clips > 1)}"
                    + (", 1 thread" if threads else ""),
                    "torchaudio `sliding_window_cmn` (per-frame loop)",
                    base / ours,
                )
            )
    window, hop = int(0.1 * SR), int(0.01 * SR)
    wave_np = wave.numpy()
    for threads in thread_counts:
        with torch_threads(threads):
            ours = time(lambda: ShortTimeAudioNormalize(0.1, 0.01)(audio))
            base = time(lambda: rms_window_loop(wave_np, window, hop), "cpu")
        rows.append(
            (
                "ShortTimeAudioNormalize(0.1 s, hop 0.01 s)" + (", 1 thread" if threads else ""),
                "per-window numpy loop + `np.interp` (CPU)",
                base / ours,
            )
        )
    energy_np = energy.numpy()
    ours = time(lambda: pcen(lin))
    rows.append(
        (
            "PCEN",
            "`librosa.pcen` on the numpy batch (CPU)",
            time(lambda: librosa.pcen(energy_np, sr=SR, hop_length=HOP, axis=-1), "cpu") / ours,
        )
    )

    table = markdown_table(("specnorm", "baseline", "speed-up"), [(a, c, f"{r:.1f}x") for a, c, r in rows])
    # Against the memory-bound limit: each transform's time as a multiple of `x.clone()` of its input.
    clone_rows, device_is_cuda = [], torch.device(device).type == "cuda"
    for name, fn, x in (
        ("InstanceSpecNorm()", lambda: instance(spec), db),
        ("SlidingSpecNorm(300)", lambda: sliding(spec), db),
        ("PCEN()", lambda: pcen(lin), lin),
    ):
        row = (name, f"{time(fn) / time(lambda: x.clone()):.1f}x")
        if device_is_cuda:
            row += (f"{kernel_time(fn) / kernel_time(lambda: x.clone()):.1f}x",)
        clone_rows.append(row)
    return (
        f"### Statistics-free transforms, {device}\n\nA batch of {b} spectrograms of {f} x {t} frames "
        f"({t * HOP / SR:g} s at a {HOP}-sample hop) and of {b} waveforms of {seconds:g} s at {SR // 1000} kHz; "
        f"each specnorm transform against a plain implementation of the same computation "
        f"(speed-up = baseline time / specnorm time; above 1 means specnorm is faster).\n\n"
        + table
        + "\n\nThe same transforms as a multiple of `x.clone()` of their input batch (the memory-bound limit; "
        "lower is better; NaN/Inf checks included, deferred on the device).\n\n"
        + markdown_table(("specnorm", "time / clone") + (("GPU time / clone's",) if device_is_cuda else ()), clone_rows)
    )
