"""The benchmarks run in smoke mode (tiny sizes) so they cannot rot; their timings are never asserted.

The GPU session script (benchmarks/gpu_session.sh) is rehearsed here in its smoke mode on the CPU, so the one
command a GPU session gets is known to run before a GPU is ever lent."""

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import benchmarks.run as bench_run
from benchmarks.run import bench_modules, main

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "benchmarks" / "gpu_session.sh"


@pytest.mark.slow
@pytest.mark.parametrize("module", bench_modules(), ids=lambda m: m.__name__)
def test_benchmark_runs_in_smoke_mode(module):
    text = module.run(device="cpu", smoke=True)
    assert text.startswith("### ") and "|---|" in text


@pytest.mark.slow
def test_runner_writes_nothing_in_smoke_mode(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    main(["--smoke", "--only", "normalize", "--out", str(out)])
    assert not out.exists()


def test_only_keeps_its_order_and_names_unknown_benchmarks():
    assert [m.__name__ for m in bench_modules(["stats", "augment"])] == [
        "benchmarks.bench_stats",
        "benchmarks.bench_augment",
    ]
    assert [m.__name__ for m in bench_modules()] == sorted(m.__name__ for m in bench_modules())
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['nope'\]: choose from \['augment'"):
        bench_modules(["stats", "nope"])


def fake(name, run):
    "A stand-in benchmark module: `run(device, smoke)` returns a section or does what `run` does."
    return SimpleNamespace(__name__=f"benchmarks.bench_{name}", run=run)


def section(name):
    return lambda device, smoke: f"### {name}, {device}\n\n| a |\n|---|\n| 1 |"


def test_a_failing_or_slow_module_becomes_a_section_and_the_run_goes_on(tmp_path, monkeypatch):
    def boom(device, smoke):
        raise RuntimeError("boom")

    def slow(device, smoke):
        time.sleep(30)

    modules = [fake("boom", boom), fake("slow", slow), fake("good", section("good"))]
    monkeypatch.setattr(bench_run, "bench_modules", lambda only: modules)
    out = tmp_path / "BENCHMARKS.md"
    start = time.perf_counter()
    with pytest.raises(SystemExit, match="not measured: benchmarks.bench_boom on cpu, benchmarks.bench_slow on cpu"):
        main(["--device", "cpu", "--module-timeout", "1", "--out", str(out)])
    assert time.perf_counter() - start < 10  # the alarm stopped the 30 s sleep
    text = out.read_text()
    assert "### bench_boom, cpu\n\nNot measured: the benchmark failed with `RuntimeError: boom`." in text
    assert "### bench_slow, cpu\n\nNot measured: stopped after 1 s (`--module-timeout`)." in text
    assert "### good, cpu" in text and "## CPU: " in text and "Interrupted" not in text


def test_a_cpu_run_keeps_the_gpu_sections_of_the_file_it_replaces(tmp_path, monkeypatch):
    out = tmp_path / "BENCHMARKS.md"
    gpu = "## CUDA: NVIDIA H200 (torch 2.11), measured 2026-11-26\n\n### good, cuda\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    out.write_text("# Benchmarks\n\nold head\n\n## CPU: old machine\n\n### good, cpu\n\nold figures\n\n" + gpu + "\n")
    monkeypatch.setattr(bench_run, "bench_modules", lambda only: [fake("good", section("good"))])
    main(["--device", "cpu", "--out", str(out)])
    text = out.read_text()
    assert "old figures" not in text and "old head" not in text and text.count("## CPU: ") == 1
    assert text.rstrip().endswith(gpu) and "kept from the last run that timed them" in text
    main(["--device", "cpu", "--out", str(out)])  # and again: still once
    assert out.read_text() == text


def test_keep_partial_leaves_the_finished_sections_when_stopped(tmp_path, monkeypatch):
    def interrupt(device, smoke):
        raise KeyboardInterrupt  # what `timeout -s INT` raises in the main thread

    def swallow(device, smoke):
        # a SIGINT whose KeyboardInterrupt something swallows (seen: an at-fork hook as DataLoader workers start)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        return section("swallowed")(device, smoke)

    handler = signal.getsignal(signal.SIGINT)
    for stopper in (interrupt, swallow):
        modules = [fake("first", section("first")), fake("stop", stopper), fake("third", section("third"))]
        monkeypatch.setattr(bench_run, "bench_modules", lambda only, modules=modules: modules)
        kept, lost = tmp_path / f"kept-{stopper.__name__}.md", tmp_path / f"lost-{stopper.__name__}.md"
        for out, flags in ((kept, ["--keep-partial"]), (lost, [])):
            with pytest.raises(SystemExit) as stop:
                main(["--device", "cpu", *flags, "--out", str(out)])
            assert stop.value.code == 130
        text = kept.read_text()
        assert "Incomplete: the run stopped (or is still running) after the sections below." in text
        assert "### first, cpu" in text and "third" not in text
        assert ("### swallowed, cpu" in text) == (stopper is swallow)
        assert not lost.exists()  # without --keep-partial a stopped run leaves the old file alone
    assert signal.getsignal(signal.SIGINT) is handler  # restored


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--smoke"])
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def run_session(tmp_path, **env):
    out = tmp_path / "out"
    env = os.environ | {"PYTHON": sys.executable, "OUT": str(out)} | env
    done = subprocess.run(["bash", str(SESSION)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, out


def test_session_script_parses():
    done = subprocess.run(["bash", "-n", str(SESSION)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_session_refuses_a_full_run_without_a_gpu(tmp_path):
    # the full benchmarks must never start by mistake on a (shared) CPU machine
    done, out = run_session(tmp_path, STAGES="tests-cuda bench-cuda")
    assert done.returncode == 1
    assert "no CUDA device: this is no GPU session" in (out / "summary.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["session.log", "summary.txt"]


@pytest.mark.slow
def test_session_rehearsal_runs_every_stage(tmp_path):
    # the smoke rehearsal: tiny benchmarks, a few device-aware tests on this machine's devices
    done, out = run_session(tmp_path, SMOKE="1", BENCH_ONLY="stats normalize")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for stage in ("tests-cuda", "tests-rest", "bench-cuda", "bench-cpu"):
        assert re.search(rf"^{stage} +rc=0 ", summary, re.M), summary
    for xml in ("tests-cuda.xml", "tests-rest.xml"):
        suite = ET.parse(out / xml).getroot().find("testsuite")
        assert int(suite.get("tests")) > 0 and suite.get("failures") == suite.get("errors") == "0"
    log = (out / "session.log").read_text()
    assert log.count("### StatsRecorder.update") >= 2 and log.count("### SpecNormalize") >= 2
    assert "bench-cpu    rc=0" in log.split("=== digest")[-1]  # the digest ends the output the device tool shows
    # what comes back from the device tool: at most 8 files, named in letters, digits, '.', '_' and '-'
    files = [p.name for p in out.iterdir()]
    assert (
        len(files) <= 8
        and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
        and all(p.is_file() for p in out.iterdir())
    )
