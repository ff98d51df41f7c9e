"""The `specnorm` command: demo, compare, stats, and one-line errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from specnorm import cli
from specnorm.stats import StatsRecorder


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
