"""The `specnorm` command (also `python -m specnorm`): `demo`, `compare` and `stats`.

`demo` needs no data and no GPU: it makes the synthetic dataset of `specnorm.synth` in a cache
folder and compares normalizations on it with settings that finish in minutes on two CPU cores.
`compare` runs the reference experiment (ESC-50 fold 1, xresnet18 from scratch) on any dataset laid
out like ESC-50, and `stats` saves training-set statistics for later use.

Every argument is checked before any work starts; a bad one, or any error on the way, ends the command
with one line on stderr (`specnorm compare: error: argument --bs: must be a positive integer, got 0`)
and exit status 2. `--debug` (or `SPECNORM_DEBUG=1`) shows the traceback instead.
"""

import argparse
import math
import os
import sys
import tempfile
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


def _resolve_auto(df, audio, args):
    "Replace `--sample-rate auto` / `--crop-ms auto` by what the files' headers give (`data.auto_settings`)."
    if "auto" not in (args.sample_rate, args.crop_ms):
        return
    from .data import _check_table, auto_settings

    _check_table(df, audio, "filename", "category", "fold", crop_signal_to=1)  # names the bad column, row or file
    chosen = auto_settings([audio / fn for fn in df["filename"]], args.sample_rate, args.crop_ms)
    print(
        f"from the files: sample rate {chosen[0]} Hz{' (auto)' if args.sample_rate == 'auto' else ''}, "
        f"crop {chosen[1]:g} ms{' (auto)' if args.crop_ms == 'auto' else ''}",
        flush=True,
    )
    args.sample_rate, args.crop_ms = chosen


def _audio_cfg(mel, sample_rate):
    from .config import AudioConfig

    if not mel:
        return AudioConfig.BasicSpectrogram()
    # 64 bands: with BasicMelSpectrogram's 400-point FFT, torchaudio's default 128 leaves some bands empty.
    return AudioConfig.BasicMelSpectrogram(sample_rate=sample_rate, n_mels=64)


def demo(args):
    "Make (or reuse) the synthetic dataset, compare normalizations on it, print and save the results."
    from functools import partial

    import pandas as pd
    from fastai.vision.models.xresnet import xresnet18

    from .config import AudioConfig
    from .experiment import compare
    from .synth import make_synthetic_dataset

    _check_methods(args.methods)
    dataset = DEMO_SETTINGS["dataset"]
    root = Path(
        args.data or _cache_dir() / "synthetic-{n_classes}x{clips_per_class}-{seconds}s-{sr}-{seed}".format(**dataset)
    )
    if not (root / "meta" / "esc50.csv").is_file():
        why = f"{root} is a file" if root.is_file() else _cannot_write_in(root)
        if why:
            raise _UsageError(f"argument --data: cannot make the synthetic dataset: {why}")
        print(f"making the synthetic dataset in {root}", flush=True)
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
        num_workers=args.workers,
        **settings,
    )
    print(results.round(4).to_string())
    print(f"results in {args.out}/ (synthetic data: {dataset})")


def compare_cmd(args):
    from .experiment import compare

    _check_methods(args.methods)
    df, audio = _read_dataset(args.data, args.csv, args.audio)
    _check_batch_size(df, args)
    _resolve_auto(df, audio, args)
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
    from .experiment import STATS_AXES
    from .spectrogram import AudioToSpec
    from .stats import compute_stats

    df, audio = _read_dataset(args.data, args.csv, args.audio)
    _resolve_auto(df, audio, args)
    # No batch-size check here: the statistics pass reads every chosen clip, whatever the batch size.
    axes = STATS_AXES[args.axes]
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
        args.out.parent.mkdir(parents=True, exist_ok=True)
        recorder.save(args.out)
    mean, std = recorder.mean.flatten(), recorder.std.flatten()
    print(
        f"{args.axes} statistics of {recorder.nobservations} training clips: mean {mean.mean():.3f} dB, "
        f"std {std.mean():.3f} dB{' (averaged over channels)' if mean.numel() > 1 else ''} -> {args.out}"
    )


# -- checking arguments -----------------------------------------------------------------------------


class _UsageError(Exception):
    "A bad command line: its message is the one line printed."


class _Parser(argparse.ArgumentParser):
    "argparse, with its errors as one line (no usage block) and exit status 2 from `main`."

    def error(self, message):
        raise _UsageError(f"{self.prog}: error: {message}")


class _Help(argparse.HelpFormatter):
    "Every option's help ends with its default, when it has one."

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "%(default)" in text or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {default})"


def _integer(low):
    "An argparse type: an integer >= `low`."

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


def _number(text, low=0.0, high=math.inf, high_included=False):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (low < value < high or (high_included and value == high)):
        bounds = f"in ({low:g}, {high:g}]" if high_included else "a positive finite number"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
    return value


def _positive_number(text):
    return _number(text)


def _or_auto(parse):
    "A parser that also takes the word `auto` (a default chosen from the files)."

    def parse_or_auto(text):
        return "auto" if text == "auto" else parse(text)

    return parse_or_auto


def _fraction(text):
    return _number(text, 0.0, 1.0, high_included=True)


def _cannot_write_in(folder):
    "Why files cannot be made in `folder` (or in the folders it would be made under), or None if they can."
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None


def _out_file(text):
    "An argparse type: a file path that can be written (its folders are made when needed)."
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file, e.g. {path / 'stats.safetensors'}")
    why = _cannot_write_in(path.parent)
    if why:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return path


def _out_folder(text):
    "An argparse type: a folder that exists or can be made, and where files can be written."
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: name a folder")
    why = _cannot_write_in(path)
    if why:
        raise argparse.ArgumentTypeError(f"{text}: {why}")
    return path


def _check_methods(methods):
    from .experiment import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise _UsageError(
            f"argument --methods: unknown normalization method(s) {unknown}: the methods are {list(METHODS)}"
        )


def _check_batch_size(df, args):
    "A batch larger than the training split leaves the training loader (which drops the last partial batch) empty."
    if not {"filename", "category", "fold"} <= set(df.columns) or not (df["fold"] == args.fold).any():
        return  # get_dls names the missing column or the empty fold
    n_train = int((df["fold"] != args.fold).sum())
    if args.bs > n_train:
        raise _UsageError(
            f"argument --bs: {args.bs} is more than the {n_train} training clips (fold {args.fold} validates): "
            "no full batch to train on"
        )


# -- the parser ------------------------------------------------------------------------------------

_COMPARE_DESCRIPTION = """\
Train the same model once per normalization method and run, and report the validation accuracy of each
(mean, std, min, max over runs): `len(methods) x runs` models of `epochs` epochs each. With the defaults that
is 3 x 5 = 15 xresnet18 trained for 20 epochs on 5 s clips, which takes hours on a CPU: see the README's
"Training on a CPU" for cheaper settings. The plan and an estimated time are printed before training starts.
"""


def _demo_description():
    d, c = DEMO_SETTINGS["dataset"], DEMO_SETTINGS["compare"]
    return (
        f"Make (on first use) a synthetic dataset of {d['n_classes']} classes x {d['clips_per_class']} clips of "
        f"{d['seconds']:g} s at {d['sr']} Hz, then compare normalizations on it: {c['audio_cfg']['n_mels']}-band mel "
        f"spectrograms, an xresnet18 at {c['arch']['widen']:g} of its width, {c['runs']} runs x {c['epochs']} "
        f"epochs per method, batch {c['bs']}. A few minutes on 2 CPU cores."
    )


def _parser():
    parser = _Parser(
        prog="specnorm",
        description="Spectrogram normalization for fastai audio: compare normalizations, compute statistics.",
        formatter_class=_Help,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or SPECNORM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,compare,stats}")
    # --debug also after the command; SUPPRESS keeps a command's parser from overwriting the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )

    def command(name, help, description=None):
        return sub.add_parser(name, help=help, description=description or help, parents=[common], formatter_class=_Help)

    def dataset_args(p, sample_rate, crop_ms):
        p.add_argument("--data", required=True, help="dataset folder laid out like ESC-50")
        p.add_argument("--csv", default="meta/esc50.csv", help="metadata CSV, relative to --data")
        p.add_argument("--audio", default="audio", help="audio folder, relative to --data")
        p.add_argument("--fold", type=int, default=1, help="validation fold")
        p.add_argument("--bs", type=_integer(1), default=64, help="batch size")
        p.add_argument("--mel", action="store_true", help="64-band mel spectrograms instead of linear ones")
        p.add_argument(
            "--sample-rate",
            type=_or_auto(_integer(1)),
            default=sample_rate,
            help="every clip is resampled to this (Hz); auto: the files' own rate, at most 16000 (never upsampled)",
        )
        p.add_argument(
            "--crop-ms",
            type=_or_auto(_positive_number),
            default=crop_ms,
            help="every clip is cropped or padded to this (ms); auto: the 90th percentile of the clip lengths",
        )
        p.add_argument("--workers", type=_integer(0), default=None, help="DataLoader workers (default: fastai's)")

    d = command(
        "demo", "compare normalizations on an embedded synthetic dataset (no download, CPU)", _demo_description()
    )
    d.add_argument("--out", type=_out_folder, default="results/demo", help="folder for results.csv and results.png")
    d.add_argument("--data", default=None, help="where to make the synthetic dataset (default: a cache folder)")
    d.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), help="normalization methods")
    d.add_argument("--workers", type=_integer(0), default=0, help="DataLoader worker processes")
    d.set_defaults(run=demo)

    c = command(
        "compare",
        "compare normalizations on a dataset laid out like ESC-50 (default: 3 methods x 5 runs x 20 epochs, 5 s clips)",
        _COMPARE_DESCRIPTION,
    )
    dataset_args(c, 16000, 5000)  # the reference protocol (ESC-50: 44.1 kHz, 5 s clips)
    c.add_argument("--methods", nargs="+", default=["none", "global", "channel"], help="normalization methods")
    c.add_argument("--epochs", type=_integer(1), default=20, help="epochs per run")
    c.add_argument("--runs", type=_integer(1), default=5, help="models trained from scratch per method")
    c.add_argument("--fraction", type=_fraction, default=1.0, help="share of training clips the statistics read")
    c.add_argument("--seed", type=_integer(0), default=None, help="makes the runs reproducible (default: not seeded)")
    c.add_argument("--out", type=_out_folder, default="results", help="folder for results.csv and results.png")
    c.set_defaults(run=compare_cmd)

    s = command("stats", "compute and save training-set statistics (safetensors)")
    dataset_args(s, "auto", "auto")
    s.add_argument("--fraction", type=_fraction, default=1.0, help="share of training clips the statistics read")
    s.add_argument("--out", type=_out_file, default="stats.safetensors", help="file the statistics are saved to")
    s.add_argument("--axes", choices=("global", "channel"), default="global", help="one mean and std, or one per row")
    s.set_defaults(run=stats_cmd)
    return parser


def _one_line(error):
    "An exception as one line: its message, with its type when it is not a plain bad-input error."
    text = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or type(error).__name__
    if isinstance(error, (FileNotFoundError, ValueError, KeyError)):
        return text
    return f"{type(error).__name__}: {text} (--debug shows the traceback)"


def main(argv=None):
    debug = os.environ.get("SPECNORM_DEBUG", "").strip() not in ("", "0")
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return 2
    debug = debug or args.debug
    # torchaudio's own import-time deprecation notice is noise to a command-line user.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from .distributed import RankError, launched

    try:
        with launched():  # under torchrun: join the process group; only rank 0 prints
            args.run(args)
    except (_UsageError, RankError) as e:
        print(f"specnorm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specnorm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"specnorm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
