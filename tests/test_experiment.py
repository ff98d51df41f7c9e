"""The experiment harness: grayscale stems, training loops, and `compare` on a tiny synthetic dataset."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn as nn
from fastai.torch_core import default_device
from fastai.vision.models.xresnet import xresnet18

from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.experiment import METHODS, compare, make_xresnet_grayscale, register_method, train_loops
from specnorm.spectrogram import AudioToSpec
from specnorm.synth import make_synthetic_dataset

SR, SECONDS = 16000, 0.5


class TinyNet(nn.Module):
    "A 3-channel-stem CNN small enough to train in a blink; it records the input shapes it sees."

    def __init__(self, n_out):
        super().__init__()
        self.n_out, self.shapes = n_out, []
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, n_out),
        )

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.body(x)


class ConstantNet(nn.Module):
    "Predicts class 0 for every input, whatever training does (its output does not depend on its weight)."

    def __init__(self, n_out):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.register_buffer("logits", torch.eye(n_out)[0] * 10)

    def forward(self, x):
        return self.logits + 0 * self.conv(x).mean((1, 2, 3))[:, None]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(root, n_classes=3, clips_per_class=5, seconds=SECONDS, sr=SR, seed=1), root / "audio"


def _spec_dls(df, path, **kwargs):
    return get_dls(
        df,
        path,
        bs=4,
        crop_signal_to=int(SECONDS * 1000),
        num_workers=0,
        device="cpu",
        batch_tfms=[AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())],
        **kwargs,
    )


# -- make_xresnet_grayscale ---------------------------------------------------------------------


def test_grayscale_stem_is_the_channel_mean():
    torch.manual_seed(0)
    model = xresnet18(n_out=7)
    rgb = xresnet18(n_out=7)
    rgb.load_state_dict(model.state_dict())
    original = model[0][0].weight.detach().double().numpy().copy()
    gray = make_xresnet_grayscale(model)
    w = gray[0][0].weight.detach().double().numpy()
    assert w.shape == (32, 1, 3, 3)
    np.testing.assert_allclose(w, original.mean(axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
    x = torch.randn(2, 1, 40, 30)
    gray.eval(), rgb.eval()
    with torch.no_grad():
        out = gray(x)
        # A convolution is linear: the mean of the RGB weights on x is the RGB stem on x/3 in every channel.
        expected = rgb(x.repeat(1, 3, 1, 1) / 3)
    assert out.shape == (2, 7)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_grayscale_to_several_channels_and_bad_models():
    model = make_xresnet_grayscale(xresnet18(n_out=3), n_in=2)
    w = model[0][0].weight
    assert w.shape[1] == 2 and torch.equal(w[:, 0], w[:, 1])
    assert model.eval()(torch.randn(1, 2, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        make_xresnet_grayscale(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="n_in"):
        make_xresnet_grayscale(xresnet18(), n_in=0)


# -- train_loops ---------------------------------------------------------------------------------


def test_train_loops_accuracy_is_the_last_epochs_validation_accuracy(synth, capsys):
    df, path = synth
    dls = _spec_dls(df, path)
    accs = train_loops(dls, "none", num_runs=2, epochs=2, arch=ConstantNet, quiet=True)
    # Class 0 of the vocab is always predicted: the accuracy is its share of the validation fold.
    valid = df[df.fold == 1]
    expected = (valid.category == sorted(df.category.unique())[0]).mean()
    assert accs == pytest.approx([expected, expected], abs=1e-6)
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"none: mean accuracy {expected:.4f} over 2 runs"


def test_train_loops_builds_fresh_one_channel_models_and_is_seeded(synth):
    df, path = synth
    dls = _spec_dls(df, path)
    models = []

    def arch(n_out):
        models.append(TinyNet(n_out))
        return models[-1]

    first = train_loops(dls, "a", num_runs=2, epochs=1, arch=arch, seed=3, quiet=True)
    again = train_loops(dls, "b", num_runs=2, epochs=1, arch=arch, seed=3, quiet=True)
    assert len(models) == 4 and len({id(m) for m in models}) == 4
    assert all(m.n_out == dls.c == 3 for m in models)  # num_cls defaults to dls.c
    assert {s[1:] for m in models for s in m.shapes} == {(1, 201, 41)}  # [b, 1, f, t]
    assert first == again
    for a, b in zip(models[0].state_dict().values(), models[2].state_dict().values()):
        torch.testing.assert_close(a, b)
    assert train_loops(dls, "c", num_runs=1, epochs=1, num_cls=5, arch=arch, quiet=True)
    assert models[-1].n_out == 5


# -- compare ---------------------------------------------------------------------------------------


def test_compare_returns_the_documented_table(synth, tmp_path, capsys, device):
    df, path = synth
    results = compare(
        df,
        path,
        runs=1,
        epochs=1,
        crop_ms=int(SECONDS * 1000),
        bs=4,
        arch=TinyNet,
        seed=0,
        quiet=True,
        save_to=tmp_path / "out",
        num_workers=0,
        device=device,
    )
    assert list(results.index) == ["none", "global", "channel"] and results.index.name == "method"
    assert list(results.columns) == ["mean", "std", "min", "max", "runs"]
    for _, row in results.iterrows():
        assert len(row.runs) == 1 and 0 <= row.runs[0] <= 1
        assert row["mean"] == row["min"] == row["max"] == row.runs[0] and row["std"] == 0
    printed = capsys.readouterr().out
    for method in results.index:
        assert f"{method}: mean accuracy {results.loc[method, 'mean']:.4f} over 1 runs" in printed
    saved = pd.read_csv(tmp_path / "out" / "results.csv", index_col="method")
    assert saved.runs.map(json.loads).tolist() == results.runs.tolist()
    np.testing.assert_allclose(saved[["mean", "std", "min", "max"]], results[["mean", "std", "min", "max"]])
    assert (tmp_path / "out" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results.attrs["stats"]) == {"global", "channel"}
    assert len(results.attrs["stats"]["channel"]["mean"]) == 201


def test_compare_summarizes_several_runs_with_the_sample_std(synth, monkeypatch):
    df, path = synth
    fake_accs = iter([[0.5, 0.7, 0.6]])
    monkeypatch.setattr("specnorm.experiment.train_loops", lambda *a, **k: next(fake_accs))
    results = compare(df, path, methods=["none"], runs=3, crop_ms=int(SECONDS * 1000), bs=4, quiet=True)
    row = results.loc["none"]
    assert (row["mean"], row["min"], row["max"]) == pytest.approx((0.6, 0.5, 0.7))
    assert row["std"] == pytest.approx(0.1)  # sample std: sqrt(((-0.1)^2 + 0.1^2 + 0) / 2)
    assert results.attrs["stats"] == {}  # 'none' needs no statistics: none were computed


def _reference_db_spectrograms(files):
    "BasicSpectrogram in float64 numpy: reflect-padded frames of 400, hop 200, periodic Hann, power in dB."
    specs = []
    for fn in files:
        x = sf.read(fn, dtype="float64")[0]
        padded = np.pad(x, 200, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::200]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
        power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
        specs.append(10 * np.log10(np.maximum(power, 1e-10)).T)  # [freq, frames]
    return np.stack(specs)


def test_compare_takes_statistics_from_the_training_split_only(tmp_path, device):
    root = tmp_path / "shifted"
    df = make_synthetic_dataset(root, n_classes=3, clips_per_class=5, seconds=SECONDS, sr=SR, seed=2)
    # The validation fold is 40 dB quieter than the training folds (float WAV: no quantization).
    for fn in df.filename[df.fold == 1]:
        x, sr = sf.read(root / "audio" / fn, dtype="float64")
        sf.write(root / "audio" / fn, x * 0.01, sr, subtype="FLOAT")
    results = compare(
        df,
        root / "audio",
        methods=["global", "channel"],
        runs=1,
        epochs=1,
        arch=TinyNet,
        crop_ms=int(SECONDS * 1000),
        bs=4,
        audio_normalize=False,
        quiet=True,
        num_workers=0,
        device=device,
    )
    train = _reference_db_spectrograms([root / "audio" / fn for fn in df.filename[df.fold != 1]])
    every = _reference_db_spectrograms([root / "audio" / fn for fn in df.filename])
    stats = results.attrs["stats"]
    assert abs(every.mean() - train.mean()) > 5  # the shift is visible in the statistics...
    # ...and the recorded ones are those of the training folds alone.
    # (float32 STFT against float64: measured differences are below 1e-4 dB.)
    assert stats["global"]["mean"][0] == pytest.approx(train.mean(), abs=1e-3)
    assert stats["global"]["std"][0] == pytest.approx(train.std(), rel=1e-4)
    np.testing.assert_allclose(stats["channel"]["mean"], train.mean(axis=(0, 2)), atol=2e-3)
    np.testing.assert_allclose(stats["channel"]["std"], train.std(axis=(0, 2)), atol=2e-3)


def test_registered_methods_run_and_unknown_ones_are_named(synth, monkeypatch):
    df, path = synth
    seen = []

    def make(stats):
        seen.append(stats["global"].mean)  # a method may look statistics up; they are computed then
        return []

    monkeypatch.setitem(METHODS, "mine", None)
    register_method("mine", make)
    results = compare(
        df,
        path,
        methods="mine",
        runs=1,
        epochs=1,
        arch=TinyNet,
        crop_ms=int(SECONDS * 1000),
        bs=4,
        quiet=True,
        num_workers=0,
    )
    assert list(results.index) == ["mine"] and len(seen) == 1
    assert set(results.attrs["stats"]) == {"global", "channel"}
    with pytest.raises(ValueError, match=r"unknown normalization method\(s\) \['nope'\]"):
        compare(df, path, methods=["none", "nope"])
    with pytest.raises(TypeError, match="callable"):
        register_method("bad", 3)


def test_statistics_free_methods_see_what_they_need(synth, monkeypatch):
    "instance, sliding and pcen need no statistics; pcen gets a linear spectrogram, the others dB."
    from fastai.data.transforms import DisplayedTransform
    from fastai.torch_core import TensorImageBase

    from specnorm.experiment import LINEAR_METHODS

    seen = {}

    class Probe(DisplayedTransform):
        order = 100

        def __init__(self, method):
            super().__init__()
            self.method = method

        def encodes(self, x: TensorImageBase):
            seen[self.method] = x.detach().cpu().as_subclass(torch.Tensor), dict(x.__dict__)  # compared on the CPU
            return x

    df, path = synth
    for name in ("instance", "sliding", "pcen"):
        make = METHODS[name]
        monkeypatch.setitem(METHODS, name, lambda stats, make=make, name=name: make(stats) + [Probe(name)])
    results = compare(
        df,
        path,
        methods=["instance", "sliding", "pcen"],
        runs=1,
        epochs=1,
        arch=TinyNet,
        crop_ms=int(SECONDS * 1000),
        bs=4,
        quiet=True,
        num_workers=0,
    )
    assert list(results.index) == ["instance", "sliding", "pcen"] and results.attrs["stats"] == {}
    assert LINEAR_METHODS == {"pcen"}
    x, meta = seen["instance"]
    torch.testing.assert_close(
        x.double().mean((2, 3)), torch.zeros(x.shape[:2], dtype=torch.float64), atol=1e-4, rtol=0
    )
    x, meta = seen["sliding"]  # 0.5 s clips are shorter than the window: each row centred on the clip
    torch.testing.assert_close(x.double().mean(3), torch.zeros(x.shape[:3], dtype=torch.float64), atol=1e-3, rtol=0)
    x, meta = seen["pcen"]
    assert meta["pcen"] and not meta["to_db"] and (x >= 0).all()


# -- what a run prints: the plan, bars or plain lines ----------------------------------------------


def test_train_loops_prints_one_line_per_epoch_and_run_into_a_log(synth, monkeypatch, capsys):
    "Not a terminal (a log file): a plain line per epoch with fastai's figures, a line per run; no bars."
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")
    df, path = synth
    dls = _spec_dls(df, path)
    accs = train_loops(dls, "none", num_runs=2, epochs=2, arch=ConstantNet)
    expected = (df[df.fold == 1].category == sorted(df.category.unique())[0]).mean()
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    figures = r"train_loss \d+\.\d{4} valid_loss \d+\.\d{4} accuracy (\d\.\d{4}) time \d\d:\d\d"
    epochs = [re.fullmatch(rf"none run ([12])/2 epoch ([12])/2: {figures}", line) for line in lines]
    assert [(m[1], m[2]) for m in epochs if m] == [(r, e) for r in "12" for e in "12"]
    assert all(float(m[3]) == pytest.approx(expected, abs=1e-4) for m in epochs if m)  # ConstantNet's accuracy
    runs = [line for line in lines if re.fullmatch(r"none run [12]/2: accuracy \d\.\d{4} in \d+ s", line)]
    assert len(runs) == 2 and lines[-1] == f"none: mean accuracy {np.mean(accs):.4f} over 2 runs"
    assert len(lines) == 4 + 2 + 1


def test_train_loops_shows_fastais_bars_and_table_on_a_terminal(synth, monkeypatch, capsys):
    monkeypatch.setenv("SPECNORM_PROGRESS", "bar")
    df, path = synth
    train_loops(_spec_dls(df, path), "none", num_runs=1, epochs=2, arch=ConstantNet)
    out = capsys.readouterr().out
    assert re.search(r"epoch\s+train_loss\s+valid_loss\s+accuracy\s+time", out)  # fastai's table
    assert "none run 1/1 epoch" not in out and "none run 1/1: accuracy" in out


def test_epoch_lines_stay_quiet_without_logging(synth, capsys):
    from fastai.learner import Learner
    from fastai.metrics import accuracy

    from specnorm.experiment import EpochLines

    df, path = synth
    learn = Learner(_spec_dls(df, path), make_xresnet_grayscale(ConstantNet(3)), metrics=accuracy)
    with learn.no_bar(), learn.no_logging(), learn.added_cbs(EpochLines("x")):
        learn.fit(1)
    assert capsys.readouterr().out == ""
    with learn.no_bar(), learn.added_cbs(EpochLines("x")):
        learn.fit(2)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["x epoch 1/2", "x epoch 2/2"]
    # the printed figures are those the Recorder kept
    for line, values in zip(lines, learn.recorder.values):
        assert line.split()[4:9:2] == [f"{v:.4f}" for v in values]


def test_compare_prints_its_plan_first_and_the_plan_changes_no_result(synth, monkeypatch, capsys):
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")
    df, path = synth
    kwargs = dict(runs=1, epochs=1, arch=TinyNet, crop_ms=int(SECONDS * 1000), bs=4, seed=5, num_workers=0)
    loud = compare(df, path, methods=["none", "channel"], **kwargs)
    out = capsys.readouterr().out
    lines = out.splitlines()
    n_valid = int((df.fold == 1).sum())
    assert lines[0] == (
        f"plan: 2 methods (none, channel) x 1 run x 1 epoch, each epoch {len(df) - n_valid} training clips "
        f"({(len(df) - n_valid) // 4} batches of 4) and {n_valid} validation clips, on {default_device()}"
    )
    estimate = re.fullmatch(r"estimated time: about (\d+) s \(one batch timed here: loading .*\)", lines[1])
    assert estimate and int(estimate[1]) >= 0
    quiet = compare(df, path, methods=["none", "channel"], quiet=True, **kwargs)
    assert capsys.readouterr().out.splitlines() == [
        f"{m}: mean accuracy {quiet.loc[m, 'mean']:.4f} over 1 runs" for m in ("none", "channel")
    ]
    # timing a batch for the plan happens before the seed is set: the seeded runs are the same
    assert loud.runs.tolist() == quiet.runs.tolist() and loud.attrs["stats"] == quiet.attrs["stats"]


def test_durations_read_as_a_person_says_them():
    from specnorm.experiment import _duration

    assert [_duration(s) for s in (0.4, 45, 89, 90, 600, 3599, 3600, 7500)] == [
        "0 s",
        "45 s",
        "89 s",
        "2 min",
        "10 min",
        "1 h 00 min",  # 59.98 minutes round to the hour
        "1 h 00 min",
        "2 h 05 min",
    ]
