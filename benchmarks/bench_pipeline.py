"""Clips per second from WAV files to normalized spectrogram batches: specnorm's `get_dls` against
per-item librosa and per-item torchaudio pipelines, on the same synthetic 44.1 kHz files."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from .common import markdown_table, timeit

SR_IN, SR, N_FFT, HOP = 44100, 16000, 400, 200


def make_files(folder, n, seconds):
    rng = np.random.default_rng(0)
    t = np.arange(int(SR_IN * seconds)) / SR_IN
    rows = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"{i}.wav", x.astype(np.float32), SR_IN, subtype="PCM_16")
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


def specnorm_epoch(dls):
    for dl in (dls.train, dls.valid):
        for _ in dl:
            pass


def run(device="cpu", smoke=False):
    from specnorm.all import AudioConfig, AudioToSpec, SpecNormalize, get_dls, preprocess_audio_folder

    n, seconds, repeat = (8, 1.0, 1) if smoke else (200, 5.0, 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df = make_files(folder, n, seconds)
        files = [folder / f for f in df.filename]
        timings = {
            "librosa, per item": timeit(lambda: librosa_pipeline(files, seconds), repeat=repeat, warmup=1),
            "torchaudio, per item": timeit(lambda: torchaudio_pipeline(files, seconds), repeat=repeat, warmup=1),
        }
        preprocess_audio_folder(files, folder / "cache", SR, progress=False)
        for label, workers, cache in [
            ("specnorm get_dls, 0 workers", 0, None),
            ("specnorm get_dls, 0 workers, cache", 0, folder / "cache"),
            ("specnorm get_dls, 2 workers", 2, None),
        ]:
            tfms = [AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram(n_fft=N_FFT)), SpecNormalize(0.0, 1.0)]
            dls = get_dls(
                df,
                folder,
                bs=32 if not smoke else 4,
                crop_signal_to=seconds * 1000,
                batch_tfms=tfms,
                num_workers=workers,
                device=device,
                cache_folder=cache,
                drop_last=False,
            )
            timings[label] = timeit(lambda: specnorm_epoch(dls), device=device, repeat=repeat, warmup=1)
    base = timings["librosa, per item"]
    rows = [(k, f"{n / v:.0f}", f"{base / v:.2f}x") for k, v in timings.items()]
    return (
        f"### Input pipeline, {device}\n\n{n} WAV files of {seconds:.0f} s at 44.1 kHz to 16 kHz, {N_FFT}-point "
        f"power spectrogram in dB (specnorm also normalizes); speed-up against per-item librosa "
        f"(`load(sr=16000)` with soxr, `stft`, `power_to_db`).\n\n"
        + markdown_table(("pipeline", "clips/s", "vs librosa"), rows)
        + "\n\nWithout the cache, decoding (soundfile) and resampling (torchaudio's windowed sinc, about 1 ms "
        "per clip, as fast as librosa's soxr) are most of the time; the cache (`cache_folder=`) removes both "
        "after the first epoch. DataLoader worker processes only pay off with more cores than the machine "
        "these figures come from."
    )
