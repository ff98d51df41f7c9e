"""Clips per second from audio files to normalized spectrogram batches: specnorm's `get_dls` (its fast
path: a `WaveformStore` and whole-batch gathers; and its per-item path) against per-item librosa and
torchaudio pipelines, on the same synthetic files: ESC-50-shaped clips (5 s at 44.1 kHz) and spoken-digit-
shaped ones (0.5 s at 8 kHz), both to 16 kHz. Cold is a fresh `get_dls` (store built in memory) plus its
first epoch; warm is a later epoch. On CUDA it adds xresnet18 training steps alone, for comparison."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from .common import machine, markdown_table, sync, timeit

SR, N_FFT, HOP = 16000, 400, 200


def make_files(folder, n, seconds, sr_in):
    rng = np.random.default_rng(0)
    t = np.arange(int(sr_in * seconds)) / sr_in
    rows = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 10 * i % 3000) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"{i}.wav", x.astype(np.float32), sr_in, subtype="PCM_16")
        rows.append(dict(filename=f"{i}.wav", fold=1 + i % 5, category=f"c{i % 4}"))
    return pd.DataFrame(rows)


def librosa_pipeline(files, seconds):
    import librosa

    for fn in files:
        y, _ = librosa.load(fn, sr=SR)
        y = librosa.util.fix_length(y, size=int(SR * seconds))
        power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, pad_mode="reflect")) ** 2
        librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def torchaudio_pipeline(files, seconds):
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    spec, to_db = T.Spectrogram(n_fft=N_FFT, hop_length=HOP), T.AmplitudeToDB()
    for fn in files:
        data, sr = sf.read(fn, dtype="float32", always_2d=True)
        x = AF.resample(torch.from_numpy(data.T), sr, SR)[..., : int(SR * seconds)]
        to_db(spec(x))


def epoch(dls):
    for dl in (dls.train, dls.valid):
        for _ in dl:
            pass


def make_dls(df, folder, seconds, device, bs, **kwargs):
    from specnorm.all import AudioConfig, AudioToSpec, SpecNormalize, get_dls

    tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram(n_fft=N_FFT)), SpecNormalize(0.0, 1.0)]
    kwargs = dict(num_workers=0, drop_last=False, sample_rate=SR) | kwargs  # the rate the baselines use
    return get_dls(df, folder, bs=bs, crop_signal_to=seconds * 1000, batch_tfms=tfms, device=device, **kwargs)


def dataset_rows(name, n, seconds, sr_in, device, smoke):
    rounds = 1 if smoke else 5
    bs = 4 if smoke else 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df = make_files(folder, n, seconds, sr_in)
        files = [folder / f for f in df.filename]
        from specnorm.all import AudioTensor, WaveformStore

        dls = make_dls(df, folder, seconds, device, bs)
        dls2 = make_dls(df, folder, seconds, device, bs, num_workers=2)
        slow = make_dls(df, folder, seconds, device, bs, fast=False)
        store = folder / "store"
        epoch(make_dls(df, folder, seconds, device, bs, cache_folder=store))
        n_samples, tfms = int(SR * seconds), dls.train.after_batch
        waves = [
            AudioTensor(torch.from_numpy(dls.train.store.gather(rows, n_samples, np.zeros(len(rows), int))[0]), sr=SR)
            for rows in np.array_split(np.arange(n), max(1, n // bs))
        ]
        candidates = {
            "librosa, per item": lambda: librosa_pipeline(files, seconds),
            "torchaudio, per item": lambda: torchaudio_pipeline(files, seconds),
            "get_dls cold (store built + first epoch)": lambda: epoch(make_dls(df, folder, seconds, device, bs)),
            "get_dls warm (later epoch)": lambda: epoch(dls),
            "get_dls warm, 2 workers": lambda: epoch(dls2),
            "get_dls, store on disk from an earlier run (open + first epoch)": lambda: epoch(
                make_dls(df, folder, seconds, device, bs, cache_folder=store)
            ),
            # the two halves of a cold epoch, for the breakdown: building the store, then the batch transforms
            "of which WaveformStore.build (decode + resample)": lambda: WaveformStore.build(
                files, sample_rate=SR, progress=False, device=device
            ),
            "of which batch transforms (AudioToSpec, SpecNormalize)": lambda: [tfms(w.to(device)) for w in waves],
            "get_dls fast=False (per item), 0 workers": lambda: epoch(slow),
        }
        for fn in candidates.values():  # warm-up: imports, caches, worker start-up, the files' pages
            fn()
        # Rounds interleave the candidates, and each keeps its best round: a slow spell of a shared machine
        # then hits every candidate alike, instead of the one timed during it (medians of 3 moved by 2x).
        times = {k: [] for k in candidates}
        for _ in range(rounds):
            for k, fn in candidates.items():
                times[k].append(timeit(fn, device=device, repeat=1, warmup=0))
        timings = {k: min(ts) for k, ts in times.items()}
    base = timings["librosa, per item"]
    rows = [(f"{name}: {k}", f"{n / v:.0f}", f"{base / v:.2f}x") for k, v in timings.items()]
    return rows


def model_only(device, smoke):
    """xresnet18 (1-channel stem) training steps alone on [64, 1, 201, 401]: clips/s with torch's SGD in fp32 and
    bf16 autocast, and with fastai's default optimizer (its `Adam`, what `Learner.fit` steps with), in fp32."""
    from fastai.optimizer import Adam
    from fastai.vision.models.xresnet import xresnet18

    bs, steps = (4, 2) if smoke else (64, 20)
    model = xresnet18(c_in=1, n_out=50).to(device)
    x, y = torch.randn(bs, 1, 201, 401, device=device), torch.randint(0, 50, (bs,), device=device)
    out = {}
    cases = (
        ("torch SGD, fp32", None, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
        ("torch SGD, bf16 autocast", torch.bfloat16, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
        ("fastai Adam, fp32", None, Adam(list(model.parameters()), lr=1e-3)),
    )
    for label, dtype, opt in cases:

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

        seconds = timeit(lambda: [step() for _ in range(steps)], device=device, repeat=3, warmup=1)
        out[label] = bs * steps / seconds
    return out


def fit_throughput(df, folder, seconds, device, smoke):
    """Clips/s of `Learner.fit` (train + valid) on `get_dls` batches, the GPU's busy share, and where an epoch
    synchronizes with the GPU.

    The clip list is repeated 4 times (the same files) and two epochs are timed after a warm-up epoch, so that an
    epoch's fixed costs (validation set-up, callbacks) weigh as in a real dataset, not as in 4 batches.
    """
    import threading

    from fastai.learner import Learner
    from fastai.vision.models.xresnet import xresnet18

    df = pd.concat([df] * (1 if smoke else 4), ignore_index=True)
    dls = make_dls(df, folder, seconds, device, 4 if smoke else 64)
    learn = Learner(dls, xresnet18(c_in=1, n_out=dls.c))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)  # warm-up: cuDNN autotuning, the store's pages
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(0.1):
            try:
                samples.append(torch.cuda.utilization(device))
            except Exception:  # no NVML: utilization unknown
                return

    watcher = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        watcher.start()
    epochs = 1 if smoke else 2
    with learn.no_bar(), learn.no_logging():
        seconds_fit = timeit(lambda: learn.fit(epochs), device=device, repeat=1, warmup=0)
    done.set()
    busy = f"{np.mean(samples):.0f} %" if samples else "n/a"
    return epochs * len(df) / seconds_fit, busy, sync_sites(learn) if device.type == "cuda" else ""


def sync_sites(learn):
    "The code lines where one `Learner.fit` epoch synchronizes with the GPU (torch's sync debug mode), counted."
    import collections
    import warnings

    with warnings.catch_warnings(record=True) as caught, learn.no_bar(), learn.no_logging():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            learn.fit(1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = collections.Counter(
        f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    )
    batches = len(learn.dls.train) + len(learn.dls.valid)
    where = ", ".join(f"{site} ({n})" for site, n in sites.most_common(6)) or "none"
    return f"{sum(sites.values())} host syncs in an epoch of {batches} batches; where: {where}"


def run(device="cpu", smoke=False):
    device = torch.device(device)
    if smoke:
        cases = [("5 s, 44.1 kHz", 8, 1.0, 44100), ("0.5 s, 8 kHz", 8, 0.5, 8000)]
    else:
        cases = [("5 s, 44.1 kHz", 256, 5.0, 44100), ("0.5 s, 8 kHz", 512, 0.5, 8000)]
    rows = [r for case in cases for r in dataset_rows(*case, device, smoke)]
    text = (
        f"### Input pipeline, {device.type}\n\n{machine(device)}. WAV files (PCM16; {cases[0][1]} ESC-50-shaped "
        f"clips of {cases[0][2]:g} s at 44.1 kHz, {cases[1][1]} spoken-digit-shaped clips of 0.5 s at 8 kHz) to "
        f"{N_FFT}-point power spectrograms in dB at 16 kHz (specnorm also normalizes), batches of 64; speed-up "
        f"against per-item librosa (`load(sr=16000)` with soxr, `stft`, `power_to_db`) on the same files; each "
        f"figure is the best of {1 if smoke else 5} rounds that time every pipeline in turn.\n\n"
        + markdown_table(("pipeline", "clips/s", "vs librosa"), rows)
        + "\n\nCold includes building the `WaveformStore` in memory (decode in threads, 16-bit files as "
        "integers; resample stacks of equal clips, on the CPU as matrix products over the resampling kernel's "
        "non-zero band); warm epochs make each batch as one gather of crops from it, so on a CPU they cost "
        "what the batch transforms cost (`AudioToSpec`'s STFT, power and dB in cache-sized chunks of clips, "
        "`SpecNormalize`), and on a GPU those run on the device. The 'of which' rows time the two halves of "
        "a cold epoch alone: the store's build, and the batch transforms over every clip (rate: clips/s of "
        "that stage alone). With the store, worker processes only add copies: `get_dls` defaults to "
        "`num_workers=0` on its fast path."
    )
    if device.type == "cuda":
        sync(device)
        speeds = model_only(device, smoke)
        name, n, seconds, sr_in = cases[0]
        with tempfile.TemporaryDirectory() as tmp:
            df = make_files(Path(tmp), n, seconds, sr_in)
            fit, busy, syncs = fit_throughput(df, Path(tmp), seconds, device, smoke)
        rows = [(f"xresnet18 training steps alone, {k}", f"{v:.0f}", "") for k, v in speeds.items()]
        rows.append((f"Learner.fit on get_dls batches ({name}; fastai Adam, fp32)", f"{fit:.0f}", busy))
        text += "\n\n" + markdown_table(("model, [64, 1, 201, 401]", "clips/s", "GPU busy"), rows)
        text += (
            f"\n\n`Learner.fit` (fastai's default `Adam`) reaches {fit / speeds['fastai Adam, fp32']:.0%} of the "
            f"model-only throughput with the same optimizer ({fit / speeds['torch SGD, fp32']:.0%} of torch's SGD) "
            "(GPU busy: `torch.cuda.utilization`, sampled every 100 ms). Two epochs over the clips listed 4 "
            f"times, after a warm-up epoch; train and validation clips both counted. {syncs}."
        )
    return text
