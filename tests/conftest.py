"""Shared fixtures: the devices to test on, and synthetic audio written to `tmp_path`."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

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
