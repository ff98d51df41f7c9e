"""`make bench`: run every `benchmarks/bench_*.py` and rewrite BENCHMARKS.md.

Each module defines `run(device="cpu", smoke=False) -> str`, a markdown section whose figures are
ratios against baselines timed in the same call. `--smoke` runs tiny sizes and writes nothing
(the test suite uses it so the benchmarks cannot rot).
"""

import argparse
import datetime
import importlib
import pkgutil
from pathlib import Path

import torch

from .common import machine

ROOT = Path(__file__).resolve().parent


def bench_modules(only=None):
    names = sorted(m.name for m in pkgutil.iter_modules([str(ROOT)]) if m.name.startswith("bench_"))
    return [importlib.import_module(f"benchmarks.{n}") for n in names if only is None or n[len("bench_") :] in only]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, print only")
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. stats normalize")
    parser.add_argument("--out", default=str(ROOT.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sections = []
    for device in devices:
        sections.append(f"## {device.upper()}: {machine(device)}\n")
        for module in bench_modules(args.only):
            text = module.run(device=device, smoke=args.smoke)
            print(text, flush=True)
            sections.append(text)
    if not args.smoke:
        head = (
            f"# Benchmarks\n\nWritten by `make bench` on {datetime.date.today()}. Each figure is a ratio "
            "against a baseline timed in the same run, on the machine named in the section heading.\n"
        )
        if devices == ["cpu"]:
            head += (
                "\nNo GPU was present for this run: on a CUDA machine, `make bench` adds the same suite on the GPU "
                "beside these CPU figures.\n"
            )
        Path(args.out).write_text(head + "\n" + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
