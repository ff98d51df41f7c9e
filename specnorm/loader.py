"""fastai DataLoaders of waveform batches: `AudioDL` (item by item, fastai's way) and `WaveformDL`
(whole batches gathered from a `WaveformStore`, the fast path of `get_dls`).

Both give batches `(AudioTensor [B, C, T], targets...)` whose `AudioTensor` carries `lengths`, an int64
tensor `[B]` (on the batch's device) of each clip's valid samples before padding, and `pad_before`, the
zeros before them (`'zeros'` padding splits them before and after), so later transforms can mask the
padding; a clip cropped or repeated to the target length is valid throughout. A batch in which every clip
is valid throughout is marked (`x.unpadded is x.lengths`, `functional.has_padding`), so the transforms skip
their masking passes. Both copy batches
to the device with `non_blocking=True` (asynchronous from pinned memory, `pin_memory=True`).

`WaveformDL` replaces fastai's per-item pipeline (open, decode, resample, downmix, crop, collate) by one
gather of slices from the store per batch: the crop (or pad) of each clip is drawn like `ResizeSignal`
(a uniform start per clip and per epoch on the training split, from the start or centred on the
validation split), from random numbers drawn in the main process before each epoch, so batches do
not depend on `num_workers`. User item transforms still run, per item, on the cropped waveforms.
"""

import keyword
import random

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.data.load import _loaders, fa_collate
from fastai.data.transforms import Categorize, ColReader, DisplayedTransform
from fastai.torch_core import TensorCategory
from torch.utils.data import get_worker_info

from .audio import AudioTensor
from .store import upload

__all__ = ["AsFloat32", "AudioDL", "WaveformDL"]


def _to_device(o, device):
    y = o.to(device, non_blocking=True)
    for name in ("lengths", "pad_before"):
        v = getattr(o, name, None)
        if isinstance(v, torch.Tensor):
            setattr(y, name, v.to(device, non_blocking=True))
    if getattr(o, "lengths", None) is not None and getattr(o, "unpadded", None) is o.lengths:
        y.unpadded = y.lengths  # still every clip full
    return y


def _with_lengths(x, lengths, pad_before, full: bool):
    """Attach a batch's `lengths` and `pad_before`; when `full` (every clip fills the batch, known on the
    host where the batch is made) mark them so the transforms skip their masking passes (`has_padding`)."""
    x.lengths, x.pad_before = lengths, pad_before
    if full:
        x.unpadded = lengths
    return x


def _pad_before(lengths, starts, n):
    "The zeros before each row's valid samples (numpy int64): `-start` for a short clip padded with zeros, else 0."
    return np.where(lengths >= n, 0, np.maximum(-starts, 0)).astype(np.int64)


def _targets(tl):
    """Every item of the fastai `TfmdLists` `tl`, as `tl[i]` makes it.

    `tl[i]` hands its transforms (`ColReader`, `Categorize`...) the row `items.iloc[i]`, a pandas Series
    made per row (tens of microseconds); where every column name is a plain identifier the rows come as
    named tuples from `itertuples` instead, which `ColReader` reads by name: the same values, in 60 % of
    the time (the rest is the transforms' own per-item dispatch).
    """
    items = tl.items
    columns = [str(c) for c in getattr(items, "columns", [])]
    if not hasattr(items, "itertuples") or len(set(columns)) != len(columns) or len(columns) != len(items.columns):
        return [tl[i] for i in range(len(tl))]
    if not all(c.isidentifier() and not keyword.iskeyword(c) and not c.startswith("_") for c in columns):
        return [tl[i] for i in range(len(tl))]
    return [tl._after_item(row) for row in items.itertuples(index=False)]


def _collated_targets(tl):
    """`fa_collate` of every item of `tl` (`_targets`), in one step for the usual label column: a `ColReader`
    of one column followed by `Categorize` maps the column through the vocabulary, with fastai's
    `KeyError` for a label the training split lacks, instead of two transforms dispatched per item."""
    fs, items = list(tl.tfms.fs), tl.items
    if (
        len(fs) == 2
        and type(fs[0]) is ColReader
        and type(fs[1]) is Categorize
        and len(fs[0].cols) == 1
        and not fs[0].pref
        and not fs[0].suff
        and fs[0].label_delim is None
        and fs[1].vocab is not None
        and fs[0].cols[0] in getattr(items, "columns", ())
    ):
        o2i = fs[1].vocab.o2i
        try:
            codes = [o2i[o] for o in items[fs[0].cols[0]].to_numpy()]
        except KeyError as e:
            raise KeyError(f"Label '{e.args[0]}' was not included in the training dataset") from e
        return TensorCategory(torch.tensor(codes, dtype=torch.int64))
    return fa_collate(_targets(tl))


class AudioDL(TfmdDL):
    """A `TfmdDL` for audio items: a batch has one sample rate, and records each clip's valid length.

    Collating clips of different rates raises a `ValueError` naming the rates (a batch has one `sr`);
    `lengths` comes from each item's `lengths` (set by `ResizeSignal`) or its full length.
    """

    def create_batch(self, b: list) -> tuple:
        xs = [it[0] for it in b] if isinstance(b[0], tuple) else b
        if not isinstance(xs[0], AudioTensor):
            res = super().create_batch(b)
            if getattr(xs[0], "lengths", None) is not None:  # e.g. spectrogram items: a batch has per-item lengths
                x = res[0] if isinstance(res, tuple) else res
                x.lengths = torch.tensor([getattr(it, "lengths", it.shape[-1]) for it in xs], dtype=torch.int64)
                x.pad_before = torch.tensor([getattr(it, "pad_before", 0) for it in xs], dtype=torch.int64)
            return res
        rates = sorted({x.sr for x in xs})
        if len(rates) > 1:
            raise ValueError(
                f"a batch mixes sample rates {rates} Hz: pass sample_rate= (get_dls, AudioBlock) to resample to one"
            )
        res = super().create_batch(b)
        x = res[0] if isinstance(res, tuple) else res
        lengths = [getattr(it, "lengths", it.shape[-1]) for it in xs]
        _with_lengths(
            x,
            torch.tensor(lengths, dtype=torch.int64),
            torch.tensor([getattr(it, "pad_before", 0) for it in xs], dtype=torch.int64),
            full=isinstance(lengths[0], int) and all(n == x.shape[-1] for n in lengths),
        )
        return res

    def __iter__(self):
        # fastai's loop, with non-blocking copies that also move `lengths` to the device
        self.randomize()
        self.before_iter()
        self._DataLoader__idxs = self.get_idxs()  # in the main process, as fastai does
        for b in _loaders[self.fake_l.num_workers == 0](self.fake_l):
            if self.pin_memory and type(b) is list:
                b = tuple(b)
            if self.device is not None:
                b = tuple(_to_device(o, self.device) for o in b) if isinstance(b, tuple) else _to_device(b, self.device)
            yield self.after_batch(b)
        self.after_iter()
        if hasattr(self, "it"):
            del self.it


class AsFloat32(DisplayedTransform):
    "Batch transform: float16 waveforms (a float16 store) to float32, on the batch's device (after the copy)."

    order = -100

    def encodes(self, x: AudioTensor):
        return x.float()


class WaveformDL(AudioDL):
    """A DataLoader that makes whole batches from a `WaveformStore`: no file open, no per-item pipeline.

    Args:
        dataset: a fastai `Datasets` subset whose `items` is a DataFrame with a file column.
        store (WaveformStore): the decoded clips of (at least) every file of `dataset`.
        fn_col (str), pref (str): a row's file is `pref + row[fn_col]`, as the store names it.
        duration (float or None): crop or pad every clip to this many milliseconds (`ResizeSignal`);
            None pads each batch at the end to its longest clip.
        pad_mode (str): `'zeros'`, `'zeros_after'` or `'repeat'`, as `ResizeSignal`.
        on_device (bool): gather batches from a copy of the store's samples on the loader's device (made
            once, `WaveformStore.samples_on`): on a GPU no batch crosses the bus. Only in the main process
            (`num_workers=0`) and without `after_item` transforms; elsewhere batches are gathered on the host.
        per_item_tfms: the full per-item pipeline (read, resample, crop, `item_tfms`), used by `new`
            for items that are not in the store (`dls.test_dl(new_df)` of other files) and empty datasets.
        **kwargs: passed to fastai's `TfmdDL` (`bs`, `shuffle`, `after_batch`, `device`, ...); `after_item`
            transforms run per item on `(waveform, target)` after the crop (slower than batch transforms).

    Shape:
        batch `(AudioTensor [B, C, round(duration * sr / 1000)] with lengths [B], targets [B])`.
    """

    # fastai's `DataLoader.new` passes every non-method attribute named in `_methods` to the new loader:
    # listing the store settings there makes any copy (`new`, statistics loaders) a working `WaveformDL`.
    _methods = (*AudioDL._methods, "store", "fn_col", "pref", "duration", "pad_mode", "per_item_tfms", "on_device")

    def __init__(
        self,
        dataset,
        store=None,
        fn_col: str = "filename",
        pref: str = "",
        duration: float | None = None,
        pad_mode: str = "zeros",
        per_item_tfms=None,
        on_device: bool = False,
        **kwargs,
    ):
        self.store, self.fn_col, self.pref, self.duration, self.pad_mode = store, fn_col, pref, duration, pad_mode
        self.per_item_tfms, self.on_device = per_item_tfms, on_device
        row_of = {f: i for i, f in enumerate(store.files)}
        self.rows = np.array([row_of[f"{pref}{fn}"] for fn in dataset.items[fn_col]], dtype=np.int64)
        n_inp = getattr(dataset, "n_inp", 1)
        self.ys = [_collated_targets(tl) for tl in dataset.tls[n_inp:]]
        self.uniform = np.zeros(len(dataset))
        super().__init__(dataset, **kwargs)

    def _targets_on(self, device: torch.device) -> list[torch.Tensor]:
        "The targets, copied once to `device` (the on-device path indexes them there: no copy per batch)."
        cache = self.__dict__.setdefault("_ys_on", {})
        if str(device) not in cache:
            cache[str(device)] = [y.to(device) for y in self.ys]
        return cache[str(device)]

    @staticmethod
    def stores(store, dataset, fn_col: str, pref: str) -> bool:
        "Whether every item of `dataset` is a row of `store` (a DataFrame of files under `pref`)."
        items = getattr(dataset, "items", None)
        if not hasattr(items, "columns") or fn_col not in items.columns:
            return False
        files = set(store.files)
        return all(f"{pref}{fn}" in files for fn in items[fn_col])

    def new(self, dataset=None, cls: type | None = None, **kwargs) -> TfmdDL:
        if dataset is not None and (len(dataset) == 0 or not self.stores(self.store, dataset, self.fn_col, self.pref)):
            # Items the store lacks go through the per-item pipeline; so does an empty dataset
            # (`Learner.export` pickles one: the store stays out of the exported file).
            return super().new(dataset, cls=AudioDL, after_item=self.per_item_tfms, **kwargs)
        return super().new(dataset, cls, **kwargs)

    @property
    def training(self) -> bool:
        return getattr(self.dataset, "split_idx", None) == 0

    def before_iter(self) -> None:
        super().before_iter()
        if self.training:
            # One uniform number per item and epoch (its crop start or padding split), drawn here in the
            # main process from Python's `random`, as `ResizeSignal` draws: `set_seed` fixes both paths.
            self.uniform = np.random.default_rng(random.getrandbits(64)).random(len(self.dataset))

    def create_item(self, s: int | None) -> int:
        return 0 if s is None else s  # an index: the batch is made in `create_batch`

    def do_item(self, s: int | None) -> int:
        return self.create_item(s)  # `after_item` runs in `create_batch`, on the cropped clips

    def retain(self, res, b):
        return res

    def starts(self, idx: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
        "Where each clip's `n` samples start (negative: zeros first), as `ResizeSignal` draws them."
        missing = n - t
        if self.training:
            u = self.uniform[idx]
            crop, before = np.floor(u * (t - n + 1)), np.floor(u * (missing + 1))
        else:
            crop, before = np.zeros_like(t), missing // 2
        if self.pad_mode == "zeros_after" or self.duration is None:
            before = np.zeros_like(t)
        return np.where(t > n, crop, -before).astype(np.int64)

    def create_batch(self, b: list[int]) -> tuple:
        idx = np.asarray(b, dtype=np.int64)
        rows = self.rows[idx]
        sr, t = int(self.store.rates[rows[0]]), self.store.nsamples[rows]
        n = round(self.duration * sr / 1000) if self.duration is not None else int(t.max())
        starts = self.starts(idx, t, n)
        if self.on_device and self.device is not None and not self.after_item.fs and get_worker_info() is None:
            data, lengths = self.store.take(self.store.samples_on(self.device), rows, n, starts, self.pad_mode)
            full = bool((lengths == n).all())  # numpy, on the host
            # one asynchronous copy for the batch's host integers; the targets are indexed where they live
            lengths, before, on_dev = upload(np.stack([lengths, _pad_before(lengths, starts, n), idx]), data.device)
            ys = [y[on_dev] for y in self._targets_on(data.device)]
            return (_with_lengths(AudioTensor(data, sr=sr), lengths, before, full), *ys)
        ys = [y[torch.from_numpy(idx)] for y in self.ys]
        data, lengths = self.store.gather(rows, n, starts, self.pad_mode)
        before = _pad_before(lengths, starts, n)
        if not self.after_item.fs:
            full = bool((lengths == n).all())
            x = AudioTensor(torch.from_numpy(data), sr=sr)
            return (_with_lengths(x, torch.from_numpy(lengths), torch.from_numpy(before), full), *ys)
        data = torch.from_numpy(data).float()
        items = [
            self.after_item(
                (AudioTensor(data[i], sr=sr, lengths=int(lengths[i]), pad_before=int(before[i])), *(y[i] for y in ys))
            )
            for i in range(len(idx))
        ]
        return super().create_batch(items)
