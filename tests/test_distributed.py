"""Statistics and experiments under torch.distributed: 2 gloo processes on 127.0.0.1, CPU.

The 2-process scenarios run in one pair of spawned workers (`two_ranks`, module-scoped: importing the
stack costs seconds per process) that save what each rank computed; the tests compare those files with
one process's results and with a float64 reference.
"""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import init_gloo, make_esc50_like, run_ranks
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import ColReader

from specnorm import cli
from specnorm.config import AudioConfig
from specnorm.data import AudioBlock, CrossValidationSplitter, get_dls
from specnorm.distributed import agree, is_distributed, rank, shard, world_size
from specnorm.drift import NormDriftMonitor
from specnorm.normalize import SpecNormalize
from specnorm.spectrogram import AudioToSpec
from specnorm.stats import StatsRecorder, compute_stats

CHANNEL, GLOBAL = (0, 1, 3), (0, 2, 3)
TIMEOUT = 30  # process-group timeout (s): a hang shows as an error well before the test's own deadline
CROP_MS = 500  # the clips last 1 s: training crops are random, so the statistics pass must not be


def _spec():
    return AudioToSpec.from_cfg(AudioConfig.BasicMelSpectrogram(sample_rate=16000, n_mels=32, n_fft=256))


def _dataset(root):
    "ESC-50-shaped: 5 folds, 4 classes x 6 clips of 1 s at 16 kHz; fold 1 validates, 19 clips train."
    root = Path(root)
    if not (root / "meta" / "esc50.csv").is_file():
        make_esc50_like(root, n_per_class=6, n_classes=4, sr=16000, seconds=1.0)
    return pd.read_csv(root / "meta" / "esc50.csv"), root / "audio"


READS = []  # file names decoded by this process


def _counting_dls(df, audio, batch_tfms, bs=3):
    "Like `get_dls`, with a `get_x` that records every file it is asked for."

    def get_x(row):
        READS.append(row["filename"])
        return str(audio / row["filename"])

    block = DataBlock(
        blocks=(AudioBlock(16000, True, CROP_MS), CategoryBlock),
        get_x=get_x,
        get_y=ColReader("category"),
        splitter=CrossValidationSplitter("fold", 1),
        batch_tfms=batch_tfms,
    )
    return block.dataloaders(df, bs=bs, num_workers=0)


def _worker(rank_, world, port, root, out):
    import torch.distributed as dist

    init_gloo(rank_, world, port, timeout_s=TIMEOUT)
    out, result = Path(out), {}
    try:
        df, audio = _dataset(root)
        # compute_stats over the training loader itself (shuffled, random crops): each rank reads its share
        dls = _counting_dls(df, audio, [_spec()])
        READS.clear()
        glob, chan = compute_stats(dls.train, progress=False)
        result["reads"] = list(READS)
        glob.save(out / f"global{rank_}.safetensors")
        chan.save(out / f"channel{rank_}.safetensors")
        (half,) = compute_stats(dls.train, red_dims=[CHANNEL], fraction=0.5, seed=3, progress=False)
        half.save(out / f"half{rank_}.safetensors")
        # SpecNormalize() in a DataBlock: setups computes the statistics, sharded
        norm = get_dls(df, audio, bs=4, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[_spec(), SpecNormalize()])
        norm = next(t for t in norm.train.after_batch.fs if isinstance(t, SpecNormalize))
        result["norm"] = [norm.mean.flatten().tolist(), norm.std.flatten().tolist()]
        # data-parallel training takes the same steps as one process
        result["train"] = _train_tiny(df, audio)
        # the drift monitor reports on every rank's batches
        monitor = NormDriftMonitor(reference=StatsRecorder(CHANNEL).update(_drift_batches()[0]), warn=False)
        result["drift"] = monitor.scan(shard(_drift_batches()[1:])).kl.tolist()
        # a bad file that only rank 1 reads: every rank raises, promptly
        bad = df.copy()
        bad.loc[bad.filename == _bad_file(df), "filename"] = "broken.wav"  # written by `two_ranks`
        # (fast=False: the per-item path reads files in the sharded statistics pass; the fast path reads every
        # file when it builds its store, on every rank, so there every rank raises the same error by itself)
        bad_dls = get_dls(  # a given sample_rate: 'auto' would read every file's header up front
            bad, audio, bs=2, sample_rate=16000, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[_spec()], fast=False
        )
        start = time.time()
        try:
            compute_stats(bad_dls.train, progress=False)
            result["bad"] = None
        except Exception as e:
            result["bad"] = [type(e).__name__, str(e), time.time() - start]
        # the fast path's store in a shared folder: rank 0 decodes and writes it, rank 1 opens it
        stored = get_dls(df, audio, bs=4, crop_signal_to=CROP_MS, num_workers=0, cache_folder=out / "store")
        result["store"] = [stored.train.store.nbytes, sorted(p.suffix for p in (out / "store").iterdir())]
        # ranks whose datasets differ (one clip fewer on rank 1): every rank raises, naming the counts
        short = get_dls(
            df.iloc[: len(df) - (rank_ == 1)], audio, bs=2, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[_spec()]
        )
        try:
            compute_stats(short.train, progress=False)
            result["differ"] = None
        except ValueError as e:
            result["differ"] = str(e)
        # plain iterables: every rank iterates the batches and folds in every other one
        plain = compute_stats([(x, None) for x in _drift_batches()], red_dims=[CHANNEL], progress=False)[0]
        result["plain"] = [plain.nbatches, plain.mean.flatten().tolist(), plain.std.flatten().tolist()]
        # the process group still works after the failures: the ranks agree
        result["after"] = agree(None, True, 7)[1]
    finally:
        (out / f"result{rank_}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def _train_tiny(df, audio):
    "Weights and last-epoch (valid_loss, accuracy) of a BatchNorm-free model trained 2 epochs (DDP under a group)."
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401 (Learner.fit_one_cycle)
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed

    from specnorm.distributed import ddp_callbacks

    # 1 s clips, no crop: every item is the same on every rank, as in one process
    dls = get_dls(df, audio, bs=4, crop_signal_to=1000, num_workers=0, batch_tfms=[_spec(), SpecNormalize()])
    set_seed(0, reproducible=True)
    dls.train.rng = random.Random(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    learn = Learner(dls, model, metrics=accuracy, cbs=ddp_callbacks())
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2, 1e-2)
    weights = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    return dict(weights=weights.tolist(), values=[float(v) for v in learn.recorder.values[-1]], steps=learn.train_iter)


def _drift_batches():
    gen = torch.Generator().manual_seed(4)
    return [torch.randn(n, 1, 5, 9, generator=gen) * (1 + i) + i for i, n in enumerate((8, 3, 4, 2, 5, 1))]


def _bad_file(df):
    "The file of the 6th training item (index 5): in rank 1's share (odd indices), never in rank 0's."
    return df[df.fold != 1].filename.iloc[5]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    "`(root, out)`: the dataset, and what each of the 2 ranks saved."
    root, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("ranks")
    _dataset(root)
    (root / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00 not a wav file")
    run_ranks(_worker, str(root), str(out))
    return root, out


def _one_process_stats(root, **kwargs):
    df, audio = _dataset(root)
    dls = _counting_dls(df, audio, [_spec()])
    READS.clear()
    recorders = compute_stats(dls.train, progress=False, **kwargs)
    return recorders, list(READS), df


@pytest.mark.slow
def test_compute_stats_on_two_ranks_equals_one_process(two_ranks):
    root, out = two_ranks
    (glob1, chan1), reads1, df = _one_process_stats(root)
    train = df[df.fold != 1].filename.tolist()
    assert len(train) == 19 and sorted(reads1) == sorted(train)  # one process reads every clip once
    ranks = [json.loads((out / f"result{r}.json").read_text()) for r in (0, 1)]
    # each rank decoded exactly its share: items 0, 2, 4... on rank 0, 1, 3, 5... on rank 1
    for r, res in enumerate(ranks):
        assert sorted(res["reads"]) == sorted(train[r::2])
    # the fast path's store in a shared folder: one store on disk (rank 0 wrote it), the same on both ranks
    assert ranks[0]["store"] == ranks[1]["store"] and ranks[0]["store"][1] == [".json", ".samples"]
    for name, single in (("global", glob1), ("channel", chan1)):
        for r in (0, 1):
            rec = StatsRecorder.load(out / f"{name}{r}.safetensors")
            assert rec.nobservations == 19
            np.testing.assert_allclose(rec.mean, single.mean, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(rec.std, single.std, rtol=1e-6)
            np.testing.assert_allclose(rec.state_dict()["m2"], single.state_dict()["m2"], rtol=1e-7)
    # against float64 numpy over the clips' first CROP_MS (the validation-style crop)
    x = _validation_crops(root).double().numpy()
    chan = StatsRecorder.load(out / "channel1.safetensors")
    np.testing.assert_allclose(chan.mean.flatten(), x.mean((0, 1, 3)), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(chan.std.flatten(), x.std((0, 1, 3)), rtol=1e-5)
    # a fraction is drawn identically on every rank: the same half as one process
    (half1,), _, _ = _one_process_stats(root, red_dims=[CHANNEL], fraction=0.5, seed=3)
    halves = [StatsRecorder.load(out / f"half{r}.safetensors") for r in (0, 1)]
    assert halves[0].nobservations == halves[1].nobservations == half1.nobservations == 10
    for h in halves:
        np.testing.assert_allclose(h.mean, half1.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h.std, half1.std, rtol=1e-6)


def _validation_crops(root):
    df, audio = _dataset(root)
    dls = get_dls(df, audio, bs=64, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[_spec()])
    dl = dls.train.new(shuffle=False, drop_last=False)
    with dl.dataset.set_split_idx(1):
        return torch.cat([b[0].as_subclass(torch.Tensor) for b in dl])


@pytest.mark.slow
def test_spec_normalize_setups_agree_across_ranks(two_ranks):
    root, out = two_ranks
    (m0, s0), (m1, s1) = (json.loads((out / f"result{r}.json").read_text())["norm"] for r in (0, 1))
    assert m0 == m1 and s0 == s1  # bit for bit
    x = _validation_crops(root).double()
    np.testing.assert_allclose(m0, [x.mean().item()], rtol=1e-6)
    np.testing.assert_allclose(s0, [x.std(correction=0).item()], rtol=1e-5)


@pytest.mark.slow
def test_a_rank_that_fails_makes_every_rank_raise_promptly(two_ranks):
    _, out = two_ranks
    ranks = [json.loads((out / f"result{r}.json").read_text()) for r in (0, 1)]
    kind0, message0, seconds0 = ranks[0]["bad"]
    kind1, message1, seconds1 = ranks[1]["bad"]
    assert kind1 == "ValueError" and "broken.wav" in message1  # rank 1 raises its own error
    assert kind0 == "RankError" and "rank 1 of 2" in message0 and "broken.wav" in message0
    assert max(seconds0, seconds1) < TIMEOUT / 2  # promptly: long before the process-group timeout
    assert ranks[0]["after"] == ranks[1]["after"] == [7, 7]  # and the group is still usable


@pytest.mark.slow
def test_data_parallel_training_takes_the_steps_of_one_process(two_ranks):
    root, out = two_ranks
    ranks = [json.loads((out / f"result{r}.json").read_text())["train"] for r in (0, 1)]
    single = _train_tiny(*_dataset(root))
    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"] == 2 * (19 // 4)  # same schedule
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP keeps the replicas identical
    # the same batches and the same averaged gradients: the same model, up to float32 rounding
    np.testing.assert_allclose(ranks[0]["weights"], single["weights"], rtol=1e-4, atol=1e-5)
    # valid_loss and accuracy summed over both ranks' halves of the validation fold: one process's values
    # (the smoothed training loss, values[0], is each rank's own)
    np.testing.assert_allclose(ranks[0]["values"][1:], single["values"][1:], rtol=1e-4)
    assert ranks[0]["values"][1:] == ranks[1]["values"][1:]


@pytest.mark.slow
def test_ranks_with_different_loaders_or_plain_batches(two_ranks):
    _, out = two_ranks
    ranks = [json.loads((out / f"result{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        assert "the ranks' loaders differ: they hold [19, 18] items" in res["differ"]
    (single,) = compute_stats(_drift_batches(), red_dims=[CHANNEL], progress=False)
    for res in ranks:
        nbatches, mean, std = res["plain"]
        assert nbatches == single.nbatches == 6
        np.testing.assert_allclose(mean, single.mean.flatten(), rtol=1e-6)
        np.testing.assert_allclose(std, single.std.flatten(), rtol=1e-6)


@pytest.mark.slow
def test_drift_monitor_reports_on_every_rank(two_ranks):
    _, out = two_ranks
    kl0, kl1 = (json.loads((out / f"result{r}.json").read_text())["drift"] for r in (0, 1))
    monitor = NormDriftMonitor(reference=StatsRecorder(CHANNEL).update(_drift_batches()[0]), warn=False)
    single = monitor.scan(_drift_batches()[1:]).kl  # one process over all the batches
    np.testing.assert_allclose(kl0, single, rtol=1e-6)
    np.testing.assert_allclose(kl1, single, rtol=1e-6)
    half = monitor.scan(_drift_batches()[1::2]).kl  # what rank 0 alone saw: clearly different
    assert np.abs(half - single).max() > 1e-2


def test_statistics_of_setups_are_the_same_from_one_call_to_the_next(tmp_path):
    # 1 s clips cropped at random to 0.5 s in training: the statistics pass reads the validation-style crop
    df, audio = _dataset(tmp_path)
    stats = []
    for _ in range(2):
        dls = get_dls(df, audio, bs=4, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[_spec(), SpecNormalize()])
        stats.append(next(t for t in dls.train.after_batch.fs if isinstance(t, SpecNormalize)).mean.item())
    assert stats[0] == stats[1]
    np.testing.assert_allclose(stats[0], _validation_crops(tmp_path).double().mean().item(), rtol=1e-6)


def test_compute_stats_names_bad_arguments():
    xs = [torch.randn(2, 1, 3, 4)]
    for bad in (0, (), [], "x", [(0, 1), 2]):
        with pytest.raises(ValueError, match="red_dims must be") as e:
            compute_stats(xs, red_dims=bad, progress=False)
        assert str(e.value).endswith(f"got {bad!r}")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_batches must be a positive int") as e:
            compute_stats(xs, max_batches=bad, progress=False)
        assert str(e.value).endswith(f"got {bad!r}")
    (rec,) = compute_stats(xs * 3, red_dims=(0, 1, 3), max_batches=2, progress=False)
    assert rec.nbatches == 2


def test_helpers_without_a_process_group():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    assert shard([1, 2, 3]) == [1, 2, 3]
    assert agree(None, True, 5) == (True, [5])
    with pytest.raises(KeyError):
        agree(KeyError("x"))


def test_torch_loader_fraction_reads_only_chosen_items():
    data = torch.arange(40.0).reshape(10, 1, 1, 4)
    seen = []

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            seen.append(i)
            return data[i]

    loader = torch.utils.data.DataLoader(Items(), batch_size=3, shuffle=True)
    (rec,) = compute_stats(loader, red_dims=GLOBAL, fraction=0.5, seed=2, progress=False)
    assert len(seen) == 5 and rec.nobservations == 5
    np.testing.assert_allclose(rec.mean.item(), data[sorted(seen)].double().mean().item(), rtol=1e-6)


def _torchrun(*args, ok=True):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    # --standalone: the rendezvous store takes a free port itself (a port picked beforehand can be taken meanwhile)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "specnorm", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_stats_with_a_bad_file_gives_one_line_per_rank(tmp_path):
    df, audio = _dataset(tmp_path / "data")
    (audio / _bad_file(df)).write_bytes(b"not audio")  # in rank 1's share
    proc = _torchrun(
        "stats", "--data", tmp_path / "data", "--workers", 0, "--out", tmp_path / "s.safetensors", ok=False
    )
    assert proc.returncode != 0 and not (tmp_path / "s.safetensors").exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("specnorm stats: error:")]
    # The fast path decodes every file when it builds its store, so each rank names the bad file itself;
    # torchrun's agent stops the other workers as soon as one exits with an error, so the second line may be
    # cut off: one or two lines, never a hang.
    assert 1 <= len(errors) <= 2 and all(_bad_file(df) in line for line in errors), proc.stderr[-3000:]
    # no traceback through specnorm (torchrun itself prints one when a rank exits with an error)
    assert "specnorm/" not in "".join(line for line in proc.stderr.splitlines() if line.lstrip().startswith("File "))


@pytest.mark.slow
def test_torchrun_stats_equals_one_process(tmp_path):
    df, audio = _dataset(tmp_path / "data")
    out = tmp_path / "stats" / "channel.safetensors"
    proc = _torchrun(
        "stats", "--data", tmp_path / "data", "--axes", "channel", "--mel", "--crop-ms", CROP_MS, "--out", out
    )
    assert proc.stdout.count("channel statistics of 19 training clips") == 1  # printed by rank 0 only
    assert [p.name for p in out.parent.iterdir()] == ["channel.safetensors"]
    cfg = cli._audio_cfg(mel=True, sample_rate=16000)  # the settings `--mel` stands for
    dls = get_dls(df, audio, crop_signal_to=CROP_MS, num_workers=0, batch_tfms=[AudioToSpec.from_cfg(cfg)])
    (single,) = compute_stats(dls.train, red_dims=[CHANNEL], progress=False)
    rec = StatsRecorder.load(out)
    assert rec.nobservations == single.nobservations == 19
    np.testing.assert_allclose(rec.mean, single.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rec.std, single.std, rtol=1e-6)


@pytest.mark.slow
def test_torchrun_compare_writes_one_results_file(tmp_path):
    df = make_esc50_like(tmp_path / "data", n_per_class=4, n_classes=2, sr=16000, seconds=0.5)
    assert len(df) == 8
    out = tmp_path / "results"
    proc = _torchrun(
        "compare", "--data", tmp_path / "data", "--runs", 1, "--epochs", 1, "--bs", 2, "--crop-ms", 500, "--mel",
        "--methods", "none", "global", "--seed", 0, "--out", out,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.png"]
    results = pd.read_csv(out / "results.csv", index_col="method")
    assert list(results.index) == ["none", "global"]
    assert results["mean"].between(0, 1).all()
    # validation accuracy over the whole validation fold (2 clips): a multiple of 1/2
    assert all((2 * results["mean"]).round(6) % 1 == 0)
    # only rank 0 prints: each method's line once
    assert proc.stdout.count("none: mean accuracy") == 1 and proc.stdout.count("global: mean accuracy") == 1
