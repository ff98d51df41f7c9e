"""StatsRecorder and compute_stats against an independent float64 two-pass reference (numpy)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import init_gloo, no_host_reads, run_ranks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import specnorm.stats as stats_module
from specnorm.audio import AudioSpectrogram
from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.spectrogram import AudioToSpec
from specnorm.stats import StatsRecorder, compute_stats

GLOBAL, CHANNEL = (0, 2, 3), (0, 1, 3)


def reference(batches, dims, masks=None, ddof=0):
    "float64 two-pass (mean, var, count) per statistic over every selected element of every batch, in numpy."
    values, keeps = [], []
    for i, b in enumerate(batches):
        a = b.detach().cpu().double().numpy()
        keep = np.ones(a.shape, bool) if masks is None else np.broadcast_to(masks[i].cpu().numpy(), a.shape)
        kept = [d for d in range(a.ndim) if d not in dims]
        perm = kept + list(dims)
        values.append(np.transpose(a, perm).reshape(*[a.shape[d] for d in kept], -1))
        keeps.append(np.transpose(keep, perm).reshape(values[-1].shape))
    a, keep = np.concatenate(values, -1), np.concatenate(keeps, -1)
    rows = [row[k] for row, k in zip(a.reshape(-1, a.shape[-1]), keep.reshape(-1, a.shape[-1]))]
    mean = np.array([r.sum() / len(r) for r in rows])
    var = np.array([((r - m) ** 2).sum() / (len(r) - ddof) for r, m in zip(rows, mean)])
    shape = [1 if d in dims else n for d, n in enumerate(batches[0].shape)]
    return mean.reshape(shape), var.reshape(shape), np.array([len(r) for r in rows]).reshape(shape)


def assert_matches(rec, ref, rtol=1e-6):
    mean, var, count = ref
    got_mean, got_var = rec.mean.double().cpu().numpy(), rec.var.double().cpu().numpy()
    assert got_mean.shape == mean.shape
    # the mean is compared relative to its size and to the spread (a mean near 0 has no relative precision)
    np.testing.assert_allclose(got_mean, mean, rtol=rtol, atol=rtol * np.sqrt(var).max())
    np.testing.assert_allclose(got_var, var, rtol=2 * rtol)
    np.testing.assert_allclose(rec.std.double().cpu().numpy(), np.sqrt(var), rtol=rtol)
    np.testing.assert_array_equal(rec.count.cpu().numpy(), count)
    state = rec.state_dict()  # the float64 statistics themselves
    np.testing.assert_allclose(state["mean"].cpu().numpy(), mean, rtol=rtol, atol=rtol * np.sqrt(var).max())
    np.testing.assert_allclose((state["m2"] / (state["count"] - rec.correction)).cpu().numpy(), var, rtol=rtol)


def make_batches(case, gen):
    "Batches `[b, 1, 12, t]` of one of the reference cases, made on the CPU from `gen`."
    if case == "unequal":  # sizes and lengths differ
        return [torch.randn(n, 1, 12, t, generator=gen) * 3 + 2 for n, t in [(5, 40), (2, 7), (9, 23), (3, 61)]]
    if case == "single_items":
        return [torch.randn(1, 1, 12, t, generator=gen) * 2 - 1 for t in (30, 5, 17, 1, 44)]
    if case == "offset":  # mean 1e4, std 1: float32 holds it only to ~1e-3
        return [torch.randn(n, 1, 12, 50, generator=gen) + 1e4 for n in (7, 1, 16)]
    if case == "db":  # log power of noise with a spectral slope: -100..0 dB, per-row levels differ
        slope = torch.linspace(0, -60, 12)[None, None, :, None]
        return [
            10 * torch.log10(torch.rand(n, 1, 12, t, generator=gen) ** 2 + 1e-10) + slope
            for n, t in [(6, 33), (4, 80), (1, 12)]
        ]
    raise ValueError(case)


@pytest.mark.parametrize("case", ["unequal", "single_items", "offset", "db"])
@pytest.mark.parametrize("dims", [GLOBAL, CHANNEL])
def test_matches_float64_two_pass(device, case, dims):
    batches = [b.to(device) for b in make_batches(case, torch.Generator().manual_seed(0))]
    rec = StatsRecorder(dims)
    for b in batches:
        rec.update(b)
    assert rec.mean.device.type == device.type and rec.mean.dtype == torch.float32
    assert rec.nobservations == sum(len(b) for b in batches) and rec.nbatches == len(batches)
    assert_matches(rec, reference(batches, dims))


def test_shapes_follow_the_reference_api():
    rec, chan = StatsRecorder(GLOBAL), StatsRecorder(CHANNEL)
    for r in (rec, chan):
        r.update(torch.randn(3, 1, 7, 11))
    assert rec.mean.shape == rec.std.shape == rec.var.shape == (1, 1, 1, 1)
    assert chan.mean.shape == chan.std.shape == chan.count.shape == (1, 1, 7, 1)
    assert int(rec.count) == 3 * 7 * 11 and chan.count.flatten().tolist() == [33] * 7
    assert StatsRecorder((-4, -3, -1)).update(torch.randn(2, 1, 7, 11)).red_dims == CHANNEL


def test_correction_one_is_unbiased(device):
    batches = [b.to(device) for b in make_batches("unequal", torch.Generator().manual_seed(1))]
    rec = StatsRecorder(CHANNEL, correction=1)
    for b in batches:
        rec.update(b)
    assert_matches(rec, reference(batches, CHANNEL, ddof=1))
    one = StatsRecorder(correction=1).update(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match="too few for correction=1"):
        one.std


def test_float64_and_half_batches():
    x = torch.randn(4, 1, 5, 9, dtype=torch.float64) * 3 + 100
    assert_matches(StatsRecorder(CHANNEL).update(x), reference([x], CHANNEL))
    h = x.half()
    assert_matches(StatsRecorder(CHANNEL).update(h), reference([h], CHANNEL))


def test_mask_counts_only_true_elements(device):
    gen = torch.Generator().manual_seed(2)
    lengths = [[50, 20, 35], [12, 50], [7]]
    batches, masks = [], []
    for ls in lengths:
        x = torch.randn(len(ls), 1, 6, 50, generator=gen) * 4 - 30
        mask = torch.arange(50)[None, None, None, :] < torch.tensor(ls)[:, None, None, None]  # [b, 1, 1, t]
        batches.append(x.masked_fill(~mask, -1e6).to(device))  # padding far from the data
        masks.append(mask.to(device))
    for dims in (GLOBAL, CHANNEL):
        rec = StatsRecorder(dims)
        for x, m in zip(batches, masks):
            rec.update(x, mask=m)
        assert_matches(rec, reference(batches, dims, masks))
        assert int(rec.count.flatten()[0]) == sum(map(sum, lengths)) * (6 if dims == GLOBAL else 1)


def test_bad_masks_are_rejected():
    rec = StatsRecorder()
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 1, 5\) does not broadcast.*\(3, 1, 4, 10\)"):
        rec.update(torch.randn(3, 1, 4, 10), mask=torch.ones(2, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        rec.update(torch.randn(3, 1, 4, 10), mask=torch.ones(3, 1, 1, 10))


def test_fully_masked_statistic_is_an_error_not_nan():
    x = torch.randn(2, 1, 3, 4)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :, 1] = False  # frequency row 1 never seen
    rec = StatsRecorder(CHANNEL).update(x, mask=mask)
    assert rec.count.flatten().tolist() == [8, 0, 8]
    with pytest.raises(ValueError, match="1 of the 3 statistics have 0 elements"):
        rec.mean


def test_nan_and_inf_raise_on_read_naming_count_and_batch(device):
    clean = torch.randn(3, 1, 4, 8, device=device)
    bad = torch.randn(3, 1, 4, 8, device=device)
    bad[0, 0, 1, 2] = bad[2, 0, 3, 7] = float("nan")
    bad[1, 0, 0, 0] = float("inf")
    bad[1, 0, 0, 1] = -float("inf")
    rec = StatsRecorder()
    rec.update(clean).update(bad).update(clean)  # no error yet: update never syncs with the host
    for read in ("mean", "std", "var", "state_dict"):
        with pytest.raises(ValueError, match=r"batch 1 \(counting from 0\) holds 4 NaN or Inf values \(4 in the 3"):
            v = getattr(rec, read)
            v() if callable(v) else None
    with pytest.raises(ValueError, match="batch 1"):
        StatsRecorder().update(clean).merge(rec)
    first = StatsRecorder().update(bad)  # a NaN in the first batch: the count stays exact
    with pytest.raises(ValueError, match="batch 0 .* holds 4 NaN"):
        first.mean


def test_nan_policy_omit_leaves_them_out(device):
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 1, 5, 9, generator=gen) * 2 + 7 for _ in range(3)]
    masks = [torch.rand(b.shape, generator=gen) > 0.1 for b in batches]  # 10 % become NaN/Inf
    dirty = [
        torch.where(m, b, torch.tensor([float("nan"), float("inf")])[i % 2]).to(device)
        for i, (b, m) in enumerate(zip(batches, masks))
    ]
    for dims in (GLOBAL, CHANNEL):
        rec = StatsRecorder(dims, nan_policy="omit")
        for x in dirty:
            rec.update(x)
        assert_matches(rec, reference(batches, dims, masks))
        assert rec.omitted == sum(int((~m).sum()) for m in masks)
    pad = torch.arange(9) < 6  # with a mask as well: padded NaNs are neither counted nor omitted
    rec = StatsRecorder(CHANNEL, nan_policy="omit").update(dirty[0], mask=pad.to(device))
    assert_matches(rec, reference([batches[0]], CHANNEL, [masks[0] & pad]))
    assert rec.omitted == int((~masks[0] & pad).sum())


def test_shape_mismatch_names_both_shapes():
    rec = StatsRecorder(CHANNEL).update(torch.randn(2, 1, 8, 10))
    rec.update(torch.randn(5, 1, 8, 3))  # only reduced dims differ: fine
    with pytest.raises(ValueError, match=r"batch 2 of shape \(2, 1, 9, 10\) does not fit .* shape \(2, 1, 8, 10\)"):
        rec.update(torch.randn(2, 1, 9, 10))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 10\)"):
        rec.update(torch.randn(2, 8, 10))


def test_clear_errors_for_misuse():
    with pytest.raises(RuntimeError, match="seen no data"):
        StatsRecorder().mean
    with pytest.raises(RuntimeError, match="seen no data"):
        StatsRecorder().count
    with pytest.raises(ValueError, match="repeats a dim"):
        StatsRecorder((0, 0))
    with pytest.raises(ValueError, match="tuple of ints"):
        StatsRecorder(("a",))
    with pytest.raises(ValueError, match="nan_policy"):
        StatsRecorder(nan_policy="ignore")
    with pytest.raises(ValueError, match="correction"):
        StatsRecorder(correction=-1)
    with pytest.raises(ValueError, match=r"dim 4 is out of range"):
        StatsRecorder((0, 4)).update(torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match="same dim twice"):
        StatsRecorder((3, -1)).update(torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match="empty"):
        StatsRecorder().update(torch.randn(0, 1, 3, 3))
    with pytest.raises(TypeError, match="tensor"):
        StatsRecorder().update(np.zeros((2, 1, 3, 3)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n_items=st.integers(1, 9),
    offset=st.sampled_from([0.0, 1e4, -60.0]),
    axis=st.sampled_from([0, 3]),
    data=st.data(),
)
def test_any_split_order_and_merge_tree_agree(seed, n_items, offset, axis, data):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, 1, 3, 9)) * rng.uniform(0.5, 5) + offset
    items = torch.from_numpy(items.astype(np.float32))
    size = items.shape[axis]
    cuts = sorted(data.draw(st.sets(st.integers(1, size - 1), max_size=size - 1))) if size > 1 else []
    chunks = torch.tensor_split(items, cuts, dim=axis)  # along the batch or along time
    order = data.draw(st.permutations(range(len(chunks))))
    ref = reference([items], CHANNEL)
    streamed = StatsRecorder(CHANNEL)
    for i in order:
        streamed.update(chunks[i])
    assert_matches(streamed, ref)
    recs = [StatsRecorder(CHANNEL).update(chunks[i]) for i in order]
    while len(recs) > 1:  # a random merge tree, mixing `+` (new recorder) and `merge` (in place)
        i = data.draw(st.integers(0, len(recs) - 2))
        a, b = recs[i], recs.pop(i + 1)
        recs[i] = a + b if data.draw(st.booleans()) else b.merge(a)
    assert_matches(recs[0], ref)
    np.testing.assert_allclose(recs[0].state_dict()["m2"], streamed.state_dict()["m2"], rtol=1e-6)


def test_add_and_sum_make_new_recorders():
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(n, 1, 4, 6, generator=gen) for n in (2, 3, 4)]
    recs = [StatsRecorder(CHANNEL).update(b) for b in batches]
    before = recs[0].state_dict()
    total = recs[0] + recs[1] + recs[2]
    assert_matches(total, reference(batches, CHANNEL))
    assert_matches(sum(recs), reference(batches, CHANNEL))
    assert torch.equal(recs[0].state_dict()["m2"], before["m2"]) and recs[0].nbatches == 1  # operands untouched
    assert_matches(StatsRecorder(CHANNEL).merge(recs[1]), reference(batches[1:2], CHANNEL))  # into an empty one
    with pytest.raises(ValueError, match="red_dims"):
        StatsRecorder(GLOBAL).update(batches[0]).merge(recs[1])
    with pytest.raises(ValueError, match=r"shape \(1, 1, 4, 1\).*shape \(1, 1, 5, 1\)"):
        recs[0].merge(StatsRecorder(CHANNEL).update(torch.randn(2, 1, 5, 6)))
    with pytest.raises(TypeError):
        recs[0].merge(3)


# -- torch.distributed over gloo on loopback -------------------------------------------------------
def _dist_batches():
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(n, 1, 6, t, generator=gen) * 10 - 40 for n, t in [(3, 20), (5, 9), (1, 33), (4, 14), (2, 2)]]


def _gloo_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    init_gloo(rank, world, port, timeout_s=60)
    try:
        batches = _dist_batches()
        rec = StatsRecorder(CHANNEL)
        for b in batches[rank::world]:  # uneven shares: 3 batches on rank 0, 2 on rank 1
            rec.update(b)
        rec.all_reduce().save(Path(out_dir) / f"even{rank}.safetensors")
        lonely = StatsRecorder(CHANNEL)  # rank 1 has no data at all
        if rank == 0:
            for b in batches:
                lonely.update(b)
        lonely.all_reduce().save(Path(out_dir) / f"lonely{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_gloo_equals_one_process(tmp_path):
    run_ranks(_gloo_worker, str(tmp_path), deadline_s=180)
    batches = _dist_batches()
    single = StatsRecorder(CHANNEL)
    for b in batches:
        single.update(b)
    for name in ("even", "lonely"):
        for rank in (0, 1):
            rec = StatsRecorder.load(tmp_path / f"{name}{rank}.safetensors")
            assert_matches(rec, reference(batches, CHANNEL))
            np.testing.assert_allclose(rec.state_dict()["m2"], single.state_dict()["m2"], rtol=1e-9)
            assert rec.nobservations == 15 and rec.nbatches == 5


def test_all_reduce_needs_an_initialised_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        StatsRecorder().update(torch.randn(2, 1, 3, 3)).all_reduce()


# -- persistence ---------------------------------------------------------------------------------
def spec_batch(n=3, f=201, t=20, **meta):
    meta = dict(sr=16000, n_fft=400, hop_length=200, win_length=400, mel=False, to_db=True, mfcc=False) | meta
    return AudioSpectrogram(torch.randn(n, 1, f, t) * 10 - 50, **meta)


def test_save_load_round_trip(tmp_path, device):
    rec = StatsRecorder(CHANNEL, correction=1)
    for n in (3, 2):
        rec.update(spec_batch(n).to(device))
    path = rec.save(tmp_path / "stats.safetensors")
    loaded = StatsRecorder.load(path, device=device)
    for k, v in rec.state_dict().items():
        got = loaded.state_dict()[k]
        assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, k
    assert loaded.settings["sr"] == 16000 and loaded.settings["n_fft"] == 400 and loaded.correction == 1
    assert torch.equal(loaded.std, rec.std) and loaded.red_dims == CHANNEL
    assert StatsRecorder().load_state_dict(rec.state_dict()).mean.equal(rec.mean)


def _saved(tmp_path):
    rec = StatsRecorder(CHANNEL).update(spec_batch(2, f=8))
    return rec.save(tmp_path / "stats.safetensors")


def test_tampered_or_truncated_files_are_rejected(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    tampered = bytearray(raw)
    tampered[-3] ^= 0x10  # a bit of the last float64 value of 'm2' or 'mean'
    (tmp_path / "tampered.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="checksum: the file was modified or corrupted"):
        StatsRecorder.load(tmp_path / "tampered.safetensors")
    (tmp_path / "short.safetensors").write_bytes(raw[: len(raw) - 20])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        StatsRecorder.load(tmp_path / "short.safetensors")
    (tmp_path / "header.safetensors").write_bytes(raw[:30])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        StatsRecorder.load(tmp_path / "header.safetensors")
    with pytest.raises(FileNotFoundError):
        StatsRecorder.load(tmp_path / "missing.safetensors")


def _rewrite(path, out, **changes):
    "Write `path`'s content with tensors replaced by `changes`, and a checksum that fits them."
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors |= changes
    config = {k: v for k, v in json.loads(meta["config"]).items() if k != "sha256"}
    config["sha256"] = stats_module._digest(tensors, config)
    save_file(tensors, str(out), metadata=meta | {"config": json.dumps(config)})
    return out


def test_wrong_shapes_dtypes_and_values_are_named(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match=r"'mean' must be a float64 tensor of shape \(1, 1, 8, 1\).*\(1, 1, 5, 1\)"):
        StatsRecorder.load(_rewrite(path, tmp_path / "a", mean=torch.zeros(1, 1, 5, 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"'m2' must be a float64 tensor.*torch.float32"):
        StatsRecorder.load(_rewrite(path, tmp_path / "b", m2=torch.zeros(1, 1, 8, 1)))
    with pytest.raises(ValueError, match="'m2'.*>= 0"):
        StatsRecorder.load(_rewrite(path, tmp_path / "c", m2=-torch.ones(1, 1, 8, 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match="'mean' holds 1 NaN"):
        StatsRecorder.load(
            _rewrite(
                path,
                tmp_path / "d",
                mean=torch.tensor([1.0, 2, 3, 4, 5, 6, 7, float("nan")], dtype=torch.float64).reshape(1, 1, 8, 1),
            )
        )
    with pytest.raises(ValueError, match="'count' must hold non-negative whole numbers"):
        StatsRecorder.load(_rewrite(path, tmp_path / "e", count=torch.full((1, 1, 8, 1), 2.5, dtype=torch.float64)))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a StatsRecorder file"):
        StatsRecorder.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="lacks nbatches"):
        state = StatsRecorder.load(path).state_dict()
        StatsRecorder().load_state_dict({k: v for k, v in state.items() if k != "nbatches"})


def test_no_pickle_is_involved(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    path = _saved(tmp_path)
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header])["__metadata__"]["format"] == stats_module._FORMAT  # plain safetensors
    assert StatsRecorder.load(path).mean.shape == (1, 1, 8, 1)


# -- compute_stats ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_compute_stats_over_get_dls_matches_stacked_batches(esc50_like):
    df, audio = esc50_like
    dls = get_dls(
        df,
        audio,
        bs=4,
        crop_signal_to=1000,
        num_workers=0,  # 1 s clips: no random crop
        batch_tfms=[AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())],
    )
    dl = dls.train.new(shuffle=False, drop_last=False)
    stacked = torch.cat([x.as_subclass(torch.Tensor) for x, _ in dl])  # every batch, transforms applied
    assert stacked.shape[1:] == (1, 201, 81)
    glob, chan = compute_stats(dl, progress=False)
    for rec, dims in ((glob, GLOBAL), (chan, CHANNEL)):
        assert_matches(rec, reference([stacked], dims))
        assert rec.nobservations == len(stacked) == len(dl.dataset)
    assert chan.settings["sr"] == 16000 and chan.settings["n_fft"] == 400 and chan.settings["to_db"] is True
    # a random half of the items, the same for the same seed; max_batches stops early
    (half,) = compute_stats(dl, red_dims=[CHANNEL], fraction=0.5, progress=True)
    assert half.nobservations == round(0.5 * len(dl.dataset)) and half.batch_shape[1:] == (1, 201, 81)
    assert torch.equal(half.mean, compute_stats(dl, red_dims=[CHANNEL], fraction=0.5, progress=False)[0].mean)
    (two,) = compute_stats(dl, red_dims=GLOBAL, max_batches=2, progress=False)
    assert two.nbatches == 2 and two.nobservations == 8
    # the training loader itself (shuffled, last partial batch dropped): every item is still counted once
    train = get_dls(
        df,
        audio,
        bs=5,
        crop_signal_to=1000,
        num_workers=0,
        batch_tfms=[AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())],
    ).train
    assert len(train.dataset) % 5 and train.drop_last and train.shuffle
    (full,) = compute_stats(train, red_dims=[CHANNEL], progress=False)
    assert full.nobservations == len(dl.dataset)
    assert_matches(full, reference([stacked], CHANNEL))


def test_compute_stats_on_plain_iterables():
    gen = torch.Generator().manual_seed(6)
    xs = [torch.randn(3, 1, 5, 7, generator=gen) * 5 + 1 for _ in range(10)]
    (rec,) = compute_stats([(x, torch.zeros(3)) for x in xs], red_dims=[CHANNEL], progress=False)
    assert_matches(rec, reference(xs, CHANNEL))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs)), batch_size=4)
    (rec,) = compute_stats(loader, red_dims=GLOBAL, progress=False)
    assert_matches(rec, reference(xs, GLOBAL))
    (some,) = compute_stats(xs, red_dims=GLOBAL, fraction=0.3, progress=False)
    assert some.nbatches == 3
    (gen_some,) = compute_stats((x for x in xs), red_dims=GLOBAL, fraction=0.5, seed=1, progress=True)
    assert 1 <= gen_some.nbatches <= 10
    with pytest.raises(ValueError, match="fraction"):
        compute_stats(xs, fraction=0)
    with pytest.raises(ValueError, match="no batches"):
        compute_stats([], progress=False)


def test_compute_stats_raises_on_nan_batches():
    xs = [torch.randn(2, 1, 3, 4) for _ in range(3)]
    xs[2][0, 0, 0, 0] = float("nan")
    (rec,) = compute_stats(xs, red_dims=GLOBAL, progress=False)
    with pytest.raises(ValueError, match="batch 2 .* holds 1 NaN"):
        rec.std


# -- plotting and the GPU contract -----------------------------------------------------------------
def test_plot_labels_frequency_in_hz():
    import matplotlib

    matplotlib.use("Agg")
    chan = StatsRecorder(CHANNEL).update(spec_batch())
    ax = chan.plot()
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata()[[0, -1]], [0, 8000])
    np.testing.assert_allclose(line.get_ydata(), chan.mean.flatten().numpy())
    assert ax.get_xlabel() == "frequency (Hz)" and "dB" in ax.get_ylabel()
    mel = StatsRecorder(CHANNEL).update(spec_batch(f=64, mel=True, n_mels=64, f_min=0.0, f_max=None))
    assert 0 < mel.plot().get_lines()[0].get_xdata()[0] < mel.plot().get_lines()[0].get_xdata()[-1] < 8000
    glob = StatsRecorder().update(spec_batch())
    m, s = glob.mean.item(), glob.std.item()
    assert glob.plot().get_title() == f"global: mean {m:.4g}, std {s:.4g}"
    plain = StatsRecorder(CHANNEL).update(torch.randn(2, 1, 6, 5))
    assert plain.plot().get_xlabel() == "statistic index" and plain.frequencies() is None


def test_update_never_reads_on_the_host_from_the_first_call(device):
    # the first update used to copy a host list to the device (a sync on CUDA); the guard also sets
    # torch.cuda.set_sync_debug_mode("error") on CUDA
    x = torch.randn(8, 1, 32, 50, device=device)
    mask = torch.rand(8, 1, 1, 50, device=device) > 0.2
    with no_host_reads():
        rec = StatsRecorder(CHANNEL).update(x)
        for _ in range(3):
            rec.update(x)
            rec.update(x, mask=mask)
        StatsRecorder(nan_policy="omit").update(x).update(x)
        StatsRecorder(GLOBAL).update(x, mask=mask)
    assert rec.nbatches == 7
    assert_matches(
        rec,
        reference([x] + [x, x] * 3, CHANNEL, masks=[torch.ones(1, dtype=bool)] + [torch.ones(1, dtype=bool), mask] * 3),
    )
