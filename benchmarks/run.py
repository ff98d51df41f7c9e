"""`make bench`: run every `benchmarks/bench_*.py` and rewrite BENCHMARKS.md.

Each module defines `run(device="cpu", smoke=False) -> str`, a markdown section whose figures are
ratios against baselines timed in the same call. `--smoke` runs tiny sizes and writes nothing
(the test suite uses it so the benchmarks cannot rot).

A GPU session with little device time (benchmarks/gpu_session.sh) picks the devices and the order:
`--device cuda --only stats normalize pipeline` times the CUDA sections only, in that order. A module that
fails, or outruns `--module-timeout`, becomes a section saying so and the run goes on; `--keep-partial`
rewrites `--out` after every section, so a run stopped by a time limit (SIGINT or SIGKILL, e.g. from
`timeout -s INT -k 20`) leaves the sections that finished.
"""

import argparse
import datetime
import importlib
import os
import pkgutil
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from .common import machine

ROOT = Path(__file__).resolve().parent
# glibc gives freed blocks above a dynamic threshold back to the system, and a batch-sized buffer then comes
# back with a page fault per 4 kB on the next call: with its defaults the same figure (a clone, fastai's
# Normalize) varied from 2x to 30x between runs, as the heap happened to be laid out. With these, a process
# keeps its freed memory (the mmap threshold at glibc's 32 MB maximum, no trimming below 1 GB), and every
# candidate and baseline is timed without those faults. Read at process start: `main` starts again with them.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def bench_names():
    "The benchmark names (`bench_stats.py` is `stats`), sorted."
    return sorted(m.name[len("bench_") :] for m in pkgutil.iter_modules([str(ROOT)]) if m.name.startswith("bench_"))


def bench_modules(only=None):
    "The benchmark modules, all sorted by name or those in `only` in its order (an unknown name is an error)."
    names = bench_names()
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}: choose from {names}")
    return [importlib.import_module(f"benchmarks.bench_{n}") for n in (only or names)]


class ModuleTimeout(BaseException):
    "A benchmark module ran past `--module-timeout` (a BaseException, so no `except Exception` in a module eats it)."


def _alarm(signum, frame):
    raise ModuleTimeout


def run_module(module, device, smoke, timeout_s=None):
    """`module.run(device, smoke)`, or a section saying why it has no figures when it raises or outruns
    `timeout_s` (SIGALRM: the main thread only, Unix). Returns `(text, ok)`."""
    title = f"### {module.__name__.rsplit('.', 1)[-1]}, {device}"
    if timeout_s:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return module.run(device=device, smoke=smoke), True
    except ModuleTimeout:
        return f"{title}\n\nNot measured: stopped after {timeout_s:g} s (`--module-timeout`).", False
    except Exception as e:
        traceback.print_exc()
        first_line = (str(e).splitlines() or [""])[0]
        return f"{title}\n\nNot measured: the benchmark failed with `{type(e).__name__}: {first_line}`.", False
    finally:
        if timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def kept_sections(out, devices):
    """The sections of the devices this run does not time, from the file it replaces: a CPU run keeps the figures
    of the last GPU session (each device section names its machine and date)."""
    try:
        old = Path(out).read_text()
    except FileNotFoundError:
        return []
    parts = re.split(r"(?m)^(?=## )", old)[1:]
    return [p.rstrip("\n") for p in parts if p.split(":")[0][3:].strip().lower() not in devices]


def write(out, devices, sections, partial=False):
    kept = kept_sections(out, devices)
    head = (
        f"# Benchmarks\n\nWritten by `make bench` on {datetime.date.today()}. Each figure is a ratio "
        "against a baseline timed in the same run, on the machine named in the section heading.\n"
    )
    if not torch.cuda.is_available():
        head += (
            "\nNo GPU was present for this run: on a CUDA machine, `make bench` adds the same suite on the GPU "
            "beside these CPU figures.\n"
        )
    elif set(devices) != {"cpu", "cuda"}:
        head += f"\nThis run timed {' and '.join(d.upper() for d in devices)} only (`--device`).\n"
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        head += (
            "\nglibc's allocator kept freed memory in this run ("
            + ", ".join(f"`{k}={v}`" for k, v in MALLOC_ENV.items())
            + ", set by `benchmarks.run`): otherwise batch-sized buffers are faulted back in page by page, and "
            "figures varied 2x to 30x between runs. README (CPU training) says what the settings do for training.\n"
        )
    if partial:
        head += "\nIncomplete: the run stopped (or is still running) after the sections below.\n"
    if kept:
        head += "\nThe sections of other devices are kept from the last run that timed them.\n"
    Path(out).write_text(head + "\n" + "\n\n".join(sections + kept) + "\n")


def main(argv=None):
    if argv is None and any(k not in os.environ for k in MALLOC_ENV):  # run as a script: start again with them
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]], {**MALLOC_ENV, **os.environ})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, print only")
    parser.add_argument("--only", nargs="*", help="benchmark names, run in this order, e.g. stats normalize")
    parser.add_argument(
        "--device", nargs="+", choices=["cpu", "cuda"], help="devices, in this order (default: cpu, then cuda if any)"
    )
    parser.add_argument("--module-timeout", type=float, help="seconds one module may run on one device")
    parser.add_argument(
        "--keep-partial", action="store_true", help="write --out after every section: a stopped run keeps them"
    )
    parser.add_argument("--out", default=str(ROOT.parent / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    try:
        modules = bench_modules(args.only)
    except ValueError as e:
        parser.error(str(e))
    sections, failed, sigints = [], [], []

    def on_sigint(signum, frame):
        # Remembered as well as raised: a KeyboardInterrupt that lands in code that swallows it (an at-fork hook
        # while a DataLoader starts its workers, a __del__) still stops the run after the module in progress.
        sigints.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for device in devices:
            sections.append(f"## {device.upper()}: {machine(device)}\n")
            for module in modules:
                start = time.perf_counter()
                text, ok = run_module(module, device, args.smoke, args.module_timeout)
                print(text, flush=True)
                print(f"[bench] {module.__name__} on {device}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
                sections.append(text)
                failed += [] if ok else [f"{module.__name__} on {device}"]
                if args.keep_partial and not args.smoke:
                    write(args.out, devices, sections, partial=True)
                if sigints:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        done = sum(s.startswith("### ") for s in sections)
        print(f"[bench] interrupted after {done} benchmark sections", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if not args.smoke:
        write(args.out, devices, sections)
    if failed:
        raise SystemExit(f"[bench] not measured: {', '.join(failed)}")


if __name__ == "__main__":
    main()
