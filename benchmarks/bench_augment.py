"""Speed of the batch augmentations against a memory copy (`x.clone()`) of the same batch, timed in the same call."""

import torch

from .common import markdown_table, timeit


def run(device="cpu", smoke=False):
    from specnorm.audio import AudioSpectrogram, AudioTensor
    from specnorm.augment_signal import (
        AddNoiseGPU,
        ChangeVolumeGPU,
        NoiseColor,
        SignalCutoutGPU,
        SignalLossGPU,
        SignalShifter,
    )
    from specnorm.augment_spectrogram import DeltaGPU, MaskFreqGPU, MaskTimeGPU, SGRoll

    b, t = (4, 800) if smoke else (64, 80000)
    f, frames = (20, 30) if smoke else (201, 401)
    repeat = 3 if smoke else 9
    gen = torch.Generator().manual_seed(0)
    signal = AudioTensor(torch.randn(b, 1, t, generator=gen).to(device), sr=16000)
    spec = AudioSpectrogram(
        torch.randn(b, 1, f, frames, generator=gen).to(device), sr=16000, hop_length=200, standardized=True
    )
    cases = [
        ("signal", "SignalShifter(p=1)", SignalShifter(p=1.0), signal),
        ("signal", "AddNoiseGPU (white)", AddNoiseGPU(max_level=0.1), signal),
        ("signal", "AddNoiseGPU (pink)", AddNoiseGPU(max_level=0.1, color=NoiseColor.Pink), signal),
        ("signal", "ChangeVolumeGPU(p=1)", ChangeVolumeGPU(p=1.0), signal),
        ("signal", "SignalCutoutGPU(p=1)", SignalCutoutGPU(p=1.0), signal),
        ("signal", "SignalLossGPU(p=1)", SignalLossGPU(p=1.0), signal),
        ("spectrogram", "MaskFreqGPU(num_masks=2)", MaskFreqGPU(num_masks=2), spec),
        ("spectrogram", "MaskTimeGPU(num_masks=2)", MaskTimeGPU(num_masks=2), spec),
        ("spectrogram", "SGRoll", SGRoll(), spec),
        ("spectrogram", "DeltaGPU (3 channels out)", DeltaGPU(), spec),
    ]
    rows = []
    for kind, name, tfm, x in cases:
        # The baseline is timed next to each candidate so a slow spell of a shared machine hits both.
        copy = timeit(lambda x=x: x.clone(), device=device, repeat=repeat)
        took = timeit(lambda tfm=tfm, x=x: tfm(x, split_idx=0), device=device, repeat=repeat)
        rows.append((name, kind, f"{took / copy:.1f}x"))
    table = markdown_table(("augmentation", "batch", "time / `x.clone()`"), rows)
    return (
        f"### Augmentations, {device}\n\nOne float32 waveform batch `[{b}, 1, {t}]` and one spectrogram batch "
        f"`[{b}, 1, {f}, {frames}]`: time of each augmentation (applied to every item) as a multiple of "
        f"`x.clone()` on the same batch (a memory copy; lower is better).\n\n" + table
    )
