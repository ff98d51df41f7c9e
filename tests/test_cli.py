"""The `specnorm` command: demo, compare, stats, their help and plans, and one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

import specnorm
from specnorm import cli
from specnorm.stats import StatsRecorder

ROOT = Path(specnorm.__file__).resolve().parent.parent


@pytest.fixture
def dataset(tmp_path):
    "An ESC-50-shaped folder written by the test: 1 s tones in noise at 22.05 kHz, 3 classes, 5 folds."
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows, t, rng = [], np.arange(22050) / 22050, np.random.default_rng(0)
    for i in range(15):
        fn = f"{i}.wav"
        x = 0.3 * np.sin(2 * np.pi * 400 * (1 + i % 3) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / "audio" / fn, x.astype(np.float32), 22050, subtype="FLOAT")
        rows.append(dict(filename=fn, fold=1 + i % 5, target=i % 3, category=f"c{i % 3}"))
    pd.DataFrame(rows).to_csv(root / "meta" / "esc50.csv", index=False)
    return root


def test_stats_writes_a_file_recorder_load_reads(dataset, tmp_path, capsys):
    out = tmp_path / "stats.safetensors"
    assert (
        cli.main(
            [
                "stats",
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--axes",
                "channel",
                "--crop-ms",
                "1000",
                "--bs",
                "4",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    rec = StatsRecorder.load(out)
    assert rec.mean.shape == (1, 1, 201, 1) and rec.nobservations == 12 and rec.settings["sr"] == 16000
    # independent reference: torchaudio on the training files (folds 2-5), reduced in float64
    df = pd.read_csv(dataset / "meta" / "esc50.csv")
    specs = []
    for fn in df.filename[df.fold != 1]:
        data, sr = sf.read(dataset / "audio" / fn, dtype="float32", always_2d=True)
        specs.append(T.AmplitudeToDB()(T.Spectrogram()(AF.resample(torch.from_numpy(data.T), sr, 16000))))
    ref = torch.stack(specs).double()
    torch.testing.assert_close(rec.mean.double(), ref.mean((0, 1, 3), keepdim=True), rtol=1e-4, atol=1e-3)
    # 0.02 dB: at the Nyquist row, past the resampler's roll-off, the two resamplers' rounding shows.
    torch.testing.assert_close(rec.std.double(), ref.std((0, 1, 3), keepdim=True, correction=0), rtol=1e-3, atol=0.02)
    assert "channel statistics of 12 training clips" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_writes_results(dataset, tmp_path, capsys):
    out = tmp_path / "res"
    assert (
        cli.main(
            [
                "compare",
                "--data",
                str(dataset),
                "--epochs",
                "1",
                "--runs",
                "1",
                "--bs",
                "4",
                "--crop-ms",
                "1000",
                "--methods",
                "none",
                "channel",
                "--out",
                str(out),
                "--workers",
                "0",
                "--mel",
            ]
        )
        == 0
    )
    results = pd.read_csv(out / "results.csv", index_col="method")
    assert list(results.index) == ["none", "channel"] and ((results["mean"] >= 0) & (results["mean"] <= 1)).all()
    assert (out / "results.png").stat().st_size > 1000
    assert "channel: mean accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_makes_its_dataset_and_compares(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        cli.DEMO_SETTINGS, "dataset", dict(n_classes=3, clips_per_class=5, seconds=0.5, sr=16000, seed=0)
    )
    tiny = dict(cli.DEMO_SETTINGS["compare"], runs=1, epochs=1, bs=4, crop_ms=500)
    monkeypatch.setitem(cli.DEMO_SETTINGS, "compare", tiny)
    assert (
        cli.main(
            ["demo", "--data", str(tmp_path / "synth"), "--out", str(tmp_path / "out"), "--methods", "none", "pcen"]
        )
        == 0
    )
    assert (tmp_path / "synth" / "meta" / "esc50.csv").is_file() and (tmp_path / "out" / "results.png").is_file()
    printed = capsys.readouterr().out
    assert "making the synthetic dataset" in printed and "pcen: mean accuracy" in printed
    # the plan comes before any training: 2 methods x 1 run x 1 epoch on 12 training and 3 validation clips
    plan = printed.index("plan: 2 methods (none, pcen) x 1 run x 1 epoch, each epoch 12 training clips")
    assert plan < printed.index("none run 1/1") and "estimated time: about" in printed


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "--data", "/nonexistent/esc"], "dataset folder not found: /nonexistent/esc"),
        (["stats", "--data", "{data}", "--csv", "meta/other.csv"], "metadata CSV not found"),
        (["stats", "--data", "{data}", "--fold", "9", "--workers", "0"], "fold 9 has no rows"),
        (["compare", "--data", "{data}", "--methods", "zscore"], "unknown normalization method(s) ['zscore']"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(dataset, capsys, args, message):
    assert cli.main([a.format(data=dataset) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_column_is_named(dataset, capsys):
    df = pd.read_csv(dataset / "meta" / "esc50.csv").drop(columns="category")
    df.to_csv(dataset / "meta" / "esc50.csv", index=False)
    assert cli.main(["stats", "--data", str(dataset)]) == 2
    assert "no column 'category'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "specnorm", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout and "compare" in done.stdout and "stats" in done.stdout


def _specnorm(args, stdout, cwd, **env):
    "Run `python -m specnorm` in a fresh process (this checkout's package), its stdout going to `stdout`."
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPECNORM_")}
    environ |= dict(PYTHONPATH=str(ROOT), MPLBACKEND="Agg", **env)
    return subprocess.run(
        [sys.executable, "-m", "specnorm", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=900,
    )


@pytest.mark.slow
def test_compare_into_a_file_writes_one_line_per_epoch(dataset, tmp_path):
    "`specnorm compare > file` (no terminal): the plan, a line per epoch, per run and per method; no bar redraws."
    log = tmp_path / "compare.log"
    with open(log, "w") as out:
        args = ["compare", "--data", str(dataset), "--methods", "channel", "--runs", "1", "--epochs", "2"]
        args += ["--bs", "4", "--crop-ms", "500", "--mel", "--workers", "0", "--out", str(tmp_path / "res")]
        done = _specnorm(args, out, tmp_path)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert log.stat().st_size < 5000 and "\r" not in text  # 215 KB of progress-bar redraws before
    lines = text.splitlines()
    assert lines[0].startswith("plan: 1 method (channel) x 1 run x 2 epochs, each epoch 12 training clips")
    assert lines[1].startswith("estimated time: about ")
    figures = r"train_loss \d+\.\d{4} valid_loss \d+\.\d{4} accuracy (0|1)\.\d{4} time \d\d:\d\d"
    epochs = [line for line in lines if re.fullmatch(rf"channel run 1/1 epoch [12]/2: {figures}", line)]
    assert [e.split(":")[0] for e in epochs] == ["channel run 1/1 epoch 1/2", "channel run 1/1 epoch 2/2"]
    assert sum("epoch" in line and "train_loss" in line for line in lines) == 2  # no other epoch output
    assert any(re.fullmatch(r"statistics: 3 batches in \d+\.\d s", line) for line in lines)
    run = next(line for line in lines if line.startswith("channel run 1/1: accuracy"))
    mean = next(line for line in lines if line.startswith("channel: mean accuracy"))
    # the run's accuracy is the last epoch's, and the mean of one run is that run
    assert run.split()[4] == epochs[-1].split()[10] == mean.split()[3]
    results = pd.read_csv(tmp_path / "res" / "results.csv", index_col="method")
    assert f"{results.loc['channel', 'mean']:.4f}" == mean.split()[3]


def _help(*args):
    "The help text of `specnorm *args`, whitespace normalized (argparse wraps it to the terminal's width)."
    parser = cli._parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*args, "--help"])
    assert exit_.value.code == 0


def test_help_shows_the_defaults(capsys):
    _help("compare")
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [
        ("--epochs EPOCHS epochs per run", "20"),
        ("--runs RUNS models trained from scratch per method", "5"),
        (
            "--crop-ms CROP_MS every clip is cropped or padded to this (ms); auto: the 90th percentile of the clip "
            "lengths",
            "5000",
        ),
        ("--bs BS batch size", "64"),
        (
            "--sample-rate SAMPLE_RATE every clip is resampled to this (Hz); auto: the files' own rate, at most 16000 "
            "(never upsampled)",
            "16000",
        ),
        ("--methods METHODS [METHODS ...] normalization methods", "none global channel"),
        ("--fraction FRACTION share of training clips the statistics read", "1.0"),
        ("--out OUT folder for results.csv and results.png", "results"),
        ("--fold FOLD validation fold", "1"),
    ]:
        assert f"{option} (default: {default})" in text
    assert "3 x 5 = 15 xresnet18 trained for 20 epochs on 5 s clips" in text
    _help("stats")
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: stats.safetensors)" in text and "(default: global)" in text
    assert "lengths (default: auto)" in text and "(never upsampled) (default: auto)" in text  # chosen from the files
    _help("demo")
    text = " ".join(capsys.readouterr().out.split())
    settings = cli.DEMO_SETTINGS["compare"]
    assert f"{settings['runs']} runs x {settings['epochs']} epochs per method" in text
    assert "(default: none global channel instance sliding pcen)" in text and "(default: results/demo)" in text
    _help()
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3 methods x 5 runs x 20 epochs, 5 s clips)" in text


def test_every_option_with_a_default_shows_it(capsys):
    "No option is left out: each one with a default (not None or a flag) prints it in its command's help."
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, cli.argparse.SUPPRESS):
                default = action.default
                shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
                assert f"(default: {shown})" in text, (name, action.option_strings)


def _root_can_write_anywhere():
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "--bs", "0"], "argument --bs: must be a positive integer, got 0"),
        (["compare", "--bs", "-1"], "argument --bs: must be a positive integer, got -1"),
        (["stats", "--bs", "two"], "argument --bs: expected an integer, got 'two'"),
        (["compare", "--sample-rate", "0"], "argument --sample-rate: must be a positive integer, got 0"),
        (["stats", "--sample-rate", "0"], "argument --sample-rate: must be a positive integer, got 0"),
        (["compare", "--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
        (["compare", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        (["compare", "--runs", "0"], "argument --runs: must be a positive integer, got 0"),
        (["compare", "--seed", "-3"], "argument --seed: must be an integer >= 0, got -3"),
        (["compare", "--fraction", "0"], "argument --fraction: must be in (0, 1], got 0"),
        (["stats", "--fraction", "1.5"], "argument --fraction: must be in (0, 1], got 1.5"),
        (["stats", "--fraction", "nan"], "argument --fraction: must be in (0, 1], got nan"),
        (["compare", "--crop-ms", "0"], "argument --crop-ms: must be a positive finite number, got 0"),
        (["compare", "--crop-ms", "inf"], "argument --crop-ms: must be a positive finite number, got inf"),
        (["stats", "--out", "{file}/stats.safetensors"], "argument --out: {file}/stats.safetensors: {file} is a file"),
        (["stats", "--out", "{folder}"], "argument --out: {folder} is a folder: name a file"),
        (["compare", "--out", "{file}"], "argument --out: {file} is a file: name a folder"),
        (["compare", "--out", "{file}/deeper/results"], "argument --out: {file}/deeper/results: {file} is a file"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument_and_value(
    dataset, tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    fill = dict(file=tmp_path / "file", folder=tmp_path / "folder")
    argv = [args[0], "--data", str(dataset), *(a.format(**fill) for a in args[1:])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specnorm {args[0]}: error: {message.format(**fill)}")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(_root_can_write_anywhere(), reason="root writes in read-only folders")
def test_out_in_a_read_only_folder(dataset, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert cli.main(["stats", "--data", str(dataset), "--out", str(locked / "s.safetensors")]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert f"argument --out: {locked / 's.safetensors'}: cannot write in {locked}" in err and err.count("\n") == 1


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no one can make files")
def test_out_where_no_file_can_be_made(dataset, capsys):
    assert cli.main(["stats", "--data", str(dataset), "--out", "/proc/specnorm/s.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "argument --out: /proc/specnorm/s.safetensors: cannot write in /proc" in err and err.count("\n") == 1


def test_stats_checks_out_before_the_statistics_pass(dataset, tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the statistics pass started before --out was checked")

    monkeypatch.setattr("specnorm.stats.compute_stats", must_not_run)
    assert cli.main(["stats", "--data", str(dataset), "--out", str(tmp_path)]) == 2
    assert "argument --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "--data", "{data}", "--bs", "13"], "argument --bs: 13 is more than the 12 training clips"),
        (["demo", "--methods", "none", "zscore"], "argument --methods: unknown normalization method(s) ['zscore']"),
        (["compare", "--data", "{data}"], None),  # the argument list below adds an unknown method
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["compare"], "the following arguments are required: --data"),
    ],
)
def test_other_usage_errors_are_one_line(dataset, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(data=dataset) for a in args]
    if message is None:
        argv, message = [*argv, "--methods", "zscore"], "unknown normalization method(s) ['zscore']"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("specnorm") and err.count("\n") == 1 and "Traceback" not in err


def test_an_unexpected_error_is_one_line_unless_debugging(dataset, tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something deep\nwent wrong")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECNORM_DEBUG", raising=False)
    monkeypatch.setattr(cli, "compare_cmd", broken)
    argv = ["compare", "--data", str(dataset)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "specnorm compare: error: RuntimeError: something deep went wrong (--debug shows the traceback)\n"
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(RuntimeError, match="something deep"):
            cli.main(debug_argv)
    monkeypatch.setenv("SPECNORM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something deep"):
        cli.main(argv)
