"""The `specnorm` command (also `python -m specnorm`): `demo`, `compare` and `stats`.

`demo` needs no data and no GPU: it makes the synthetic dataset of `specnorm.synth` in a cache
folder and compares normalizations on it with settings that finish in minutes on two CPU cores.
`compare` runs the reference experiment (ESC-50 fold 1, xresnet18 from scratch) on any dataset laid
out like ESC-50, and `stats` saves training-set statistics for later use.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

__all__ = ["DEMO_METHODS", "DEMO_SETTINGS", "main"]

# Chosen so `specnorm demo` finishes in under 5 minutes on 2 CPU cores (measured: see README):
# 1 s clips, 64-band mel spectrograms, and an xresnet18 a quarter as wide (0.7 M parameters).
DEMO_SETTINGS = dict(
    dataset=dict(n_classes=10, clips_per_class=20, seconds=1.0, sr=16000, seed=0),
    compare=dict(
        runs=2,
        epochs=8,
        bs=16,
        lr=3e-3,
        crop_ms=1000,
        seed=0,
        sample_rate=16000,
        audio_cfg=dict(n_mels=64, n_fft=512, hop_length=256),
        arch=dict(widen=0.25, stem_szs=(16, 16, 64)),
    ),
)
DEMO_METHODS = ("none", "global", "channel", "instance", "sliding", "pcen")


def _cache_dir():
    return Path(
        os.environ.get("SPECNORM_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specnorm")
    )


def _read_dataset(data, csv, audio):
    "The metadata DataFrame and audio folder of an ESC-50-style dataset, with one-line errors."
    import pandas as pd

    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data}")
    csv_path = data / csv
    if not csv_path.is_file():
        raise FileNotFoundError(f"metadata CSV not found: {csv_path}")
    return pd.read_csv(csv_path), data / audio


def _audio_cfg(mel, sample_rate):
    from .config import AudioConfig

    return AudioConfig.BasicMelSpectrogram(sample_rate=sample_rate) if mel else AudioConfig.BasicSpectrogram()


def demo(args):
    "Make (or reuse) the synthetic dataset, compare normalizations on it, print and save the results."
    from functools import partial

    import pandas as pd
    from fastai.vision.models.xresnet import xresnet18

    from .config import AudioConfig
    from .experiment import compare
    from .synth import make_synthetic_dataset

    dataset = DEMO_SETTINGS["dataset"]
    root = Path(
        args.data or _cache_dir() / "synthetic-{n_classes}x{clips_per_class}-{seconds}s-{sr}-{seed}".format(**dataset)
    )
    if not (root / "meta" / "esc50.csv").is_file():
        print(f"making the synthetic dataset in {root}")
        make_synthetic_dataset(root, **dataset)
    settings = dict(DEMO_SETTINGS["compare"])
    settings["audio_cfg"] = AudioConfig.BasicMelSpectrogram(
        sample_rate=settings["sample_rate"], **settings["audio_cfg"]
    )
    settings["arch"] = partial(xresnet18, **settings["arch"])
    results = compare(
        pd.read_csv(root / "meta" / "esc50.csv"),
        root / "audio",
        methods=args.methods,
        save_to=args.out,
        num_workers=args.workers or 0,
        **settings,
    )
    print(results.round(4).to_string())
    print(f"results in {args.out}/ (synthetic data: {dataset})")


def compare_cmd(args):
    from .experiment import compare

    df, audio = _read_dataset(args.data, args.csv, args.audio)
    results = compare(
        df,
        audio,
        methods=args.methods,
        runs=args.runs,
        epochs=args.epochs,
        fold=args.fold,
        bs=args.bs,
        fraction=args.fraction,
        audio_cfg=_audio_cfg(args.mel, args.sample_rate),
        sample_rate=args.sample_rate,
        crop_ms=args.crop_ms,
        seed=args.seed,
        save_to=args.out,
        num_workers=args.workers,
    )
    print(results.to_string())


def stats_cmd(args):
    from .data import get_dls
    from .distributed import rank
    from .spectrogram import AudioToSpec
    from .stats import compute_stats

    df, audio = _read_dataset(args.data, args.csv, args.audio)
    axes = {"global": (0, 2, 3), "channel": (0, 1, 3)}[args.axes]
    dls = get_dls(
        df,
        audio,
        bs=args.bs,
        fold=args.fold,
        crop_signal_to=args.crop_ms,
        num_workers=args.workers,
        sample_rate=args.sample_rate,
        batch_tfms=[AudioToSpec.from_cfg(_audio_cfg(args.mel, args.sample_rate))],
    )
    (recorder,) = compute_stats(dls.train, red_dims=[axes], fraction=args.fraction)
    if rank() == 0:  # every rank holds the statistics of all the items: one writes them
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        recorder.save(args.out)
    mean, std = recorder.mean.flatten(), recorder.std.flatten()
    print(
        f"{args.axes} statistics of {recorder.nobservations} training clips: mean {mean.mean():.3f} dB, "
        f"std {std.mean():.3f} dB{' (averaged over channels)' if mean.numel() > 1 else ''} -> {args.out}"
    )


def _parser():
    parser = argparse.ArgumentParser(prog="specnorm", description="Spectrogram normalization for fastai audio.")
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_args(p):
        p.add_argument("--data", required=True, help="dataset folder laid out like ESC-50")
        p.add_argument("--csv", default="meta/esc50.csv", help="metadata CSV, relative to --data")
        p.add_argument("--audio", default="audio", help="audio folder, relative to --data")
        p.add_argument("--fold", type=int, default=1, help="validation fold")
        p.add_argument("--bs", type=int, default=64)
        p.add_argument("--mel", action="store_true", help="mel spectrograms instead of linear ones")
        p.add_argument("--sample-rate", type=int, default=16000)
        p.add_argument("--crop-ms", type=float, default=5000)
        p.add_argument("--fraction", type=float, default=1.0, help="share of training batches used for statistics")
        p.add_argument("--workers", type=int, default=None, help="DataLoader workers (fastai's default if unset)")

    d = sub.add_parser("demo", help="compare normalizations on an embedded synthetic dataset (no download, CPU)")
    d.add_argument("--out", default="results/demo", help="folder for results.csv and results.png")
    d.add_argument("--data", default=None, help="where to make the synthetic dataset (default: a cache folder)")
    d.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(run=demo)

    c = sub.add_parser("compare", help="compare normalizations on a dataset laid out like ESC-50")
    dataset_args(c)
    c.add_argument("--methods", nargs="+", default=["none", "global", "channel"])
    c.add_argument("--epochs", type=int, default=20)
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--out", default="results", help="folder for results.csv and results.png")
    c.set_defaults(run=compare_cmd)

    s = sub.add_parser("stats", help="compute and save training-set statistics")
    dataset_args(s)
    s.add_argument("--out", default="stats.safetensors")
    s.add_argument("--axes", choices=("global", "channel"), default="global")
    s.set_defaults(run=stats_cmd)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    # torchaudio's own import-time deprecation notice is noise to a command-line user.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from .distributed import RankError, launched

    try:
        with launched():  # under torchrun: join the process group; only rank 0 prints
            args.run(args)
    except (FileNotFoundError, ValueError, KeyError, RankError) as e:
        print(f"specnorm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
