"""The `specnorm` command (also `python -m specnorm`)."""
import argparse
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


def pipeline_demo(out):
    "Write a synthetic clip, load it, make its spectrogram and save the waveform and spectrogram plots."
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    import matplotlib.pyplot as plt
    from .audio import AudioTensor
    from .config import AudioConfig
    from .signal import DownmixMono, Resample, ResizeSignal
    from .spectrogram import AudioToSpec

    out.mkdir(parents=True, exist_ok=True)
    sr, t = 44100, np.arange(3 * 44100) / 44100
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 1000 * t ** 2))   # 200 Hz rising to 6200 Hz
    AudioTensor(chirp.astype("float32"), sr=sr).save(out / "chirp.wav")
    audio = AudioTensor.create(out / "chirp.wav")
    item = ResizeSignal(3000)(DownmixMono()(Resample(16000)(audio)))
    spec = AudioToSpec.from_cfg(AudioConfig.BasicMelSpectrogram(n_mels=64))(item)
    item.show(title="chirp.wav at 16 kHz").figure.savefig(out / "waveform.png", dpi=100)
    spec.show(title="mel spectrogram").figure.savefig(out / "spectrogram.png", dpi=100)
    plt.close("all")
    print(f"{audio.duration:.1f} s at {audio.sr} Hz -> {tuple(item.shape)} at {item.sr} Hz -> "
          f"spectrogram {tuple(spec.shape)}; plots in {out}/")


def main(argv=None):
    # torchaudio's own import-time deprecation notice is noise to a command-line user.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    parser = argparse.ArgumentParser(prog="specnorm", description="Spectrogram normalization for fastai.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo on embedded synthetic data")
    demo.add_argument("--out", default="results/demo", type=Path)
    args = parser.parse_args(argv)
    if args.command == "demo":
        pipeline_demo(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
