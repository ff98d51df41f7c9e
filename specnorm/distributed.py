"""Running past one process: ranks, sharding, status exchange and data-parallel training.

When a default `torch.distributed` process group is initialized (by `torchrun`, fastai's `distrib_ctx`,
or the user's own `init_process_group`), specnorm's statistics passes (`compute_stats`, and through it
`SpecNormalize.setups` and `compare`'s `TrainStats`) read only this rank's share of the chosen items
(`shard`: `items[rank::world]`) and all-reduce their `StatsRecorder`s, so every rank ends with the
statistics of all the items, as one process computes them. Ranks exchange a status (`agree`) every
few batches and before any collective on the statistics, so one rank that fails (a bad file) makes
every rank raise a `RankError` promptly instead of leaving the others waiting in a collective.

Training under `torchrun` uses plain PyTorch `DistributedDataParallel` through `DDPTrainer`, a fastai
callback that gives each rank its share of every epoch (`rank_loader`). fastai's own `DistributedTrainer`
and `DistributedDL` need Accelerate (`fastai.distributed` does not even import without it), which
specnorm does not require. Without a process group (or with one rank) every function here is a no-op.
On CPU the backend is gloo, on GPUs NCCL (`launched`).
"""

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.data.load import DataLoader
from fastai.learner import AvgMetric, Metric
from fastai.torch_core import to_detach
from fastcore.basics import noop

__all__ = [
    "STATUS_EVERY",
    "DDPTrainer",
    "RankError",
    "agree",
    "ddp_callbacks",
    "is_distributed",
    "launched",
    "on_rank_zero_output",
    "rank",
    "rank_loader",
    "rank_zero_output",
    "shard",
    "world_size",
]

# Bytes of each rank's error message that `agree` passes to the other ranks.
_MESSAGE_BYTES = 1000
# A statistics pass exchanges a status every this many batches: a failed rank waits at most that long
# (and the others learn of it), for one tiny collective per 8 batches.
STATUS_EVERY = 8


class RankError(RuntimeError):
    "Another rank failed: raised on every rank that did not fail itself, naming the rank and its error."


def is_distributed(group: "dist.ProcessGroup | None" = None) -> bool:
    "Whether a process group with more than one rank is initialized."
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group: "dist.ProcessGroup | None" = None) -> int:
    "This process's rank in `group` (0 without a process group)."
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: "dist.ProcessGroup | None" = None) -> int:
    "The number of ranks in `group` (1 without a process group)."
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def shard(items: Sequence, group: "dist.ProcessGroup | None" = None) -> Sequence:
    """This rank's share of `items`: `items[rank::world]` (all of them in one process).

    Shares differ in size by at most one item; together they hold every item once.

    Example:
        >>> from specnorm.distributed import shard
        >>> shard(list(range(5)))   # one process: everything
        [0, 1, 2, 3, 4]
    """
    return items[rank(group) :: world_size(group)] if is_distributed(group) else items


def _device(group=None):
    "Where the tensors of `group`'s collectives live: the current GPU for NCCL, else the CPU."
    if "nccl" in str(dist.get_backend(group)):  # "nccl", or e.g. "cpu:gloo,cuda:nccl" (both)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _summary(error):
    "One line for `error`: a DataLoader worker's error carries its traceback, whose last line says what failed."
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [""]
    return f"{type(error).__name__}: {lines[0]}" + (f" ({lines[-1]})" if len(lines) > 1 else "")


def agree(
    error: BaseException | None = None, done: bool = True, value: int = 0, group: "dist.ProcessGroup | None" = None
) -> tuple[bool, list[int]]:
    """Exchange a status with every rank, before any collective that a failed rank would never join.

    Every rank calls it the same number of times. If any rank passes an `error`, every rank raises:
    the failing rank re-raises its own exception, the others a `RankError` naming the failing rank and
    its message. Returns `(whether every rank is done, [every rank's value])`, the integer `value`s in
    rank order (e.g. how many items each rank's loader holds). In one process it raises `error` if
    given and returns `(done, [value])`.
    """
    if not is_distributed(group):
        if error is not None:
            raise error
        return done, [value]
    world, device = dist.get_world_size(group), _device(group)
    header = torch.tensor([error is not None, bool(done), int(value)], device=device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    headers = torch.stack(headers).tolist()
    failed = [r for r, h in enumerate(headers) if h[0]]
    if failed:
        text = b"" if error is None else _summary(error).encode()[:_MESSAGE_BYTES]
        message = torch.tensor(list(text.ljust(_MESSAGE_BYTES, b"\0")), dtype=torch.uint8, device=device)
        messages = [torch.empty_like(message) for _ in range(world)]
        dist.all_gather(messages, message, group=group)
        if error is not None:
            raise error
        r = failed[0]
        text = bytes(messages[r].cpu().tolist()).rstrip(b"\0").decode(errors="replace")
        others = f" (ranks {failed} failed)" if len(failed) > 1 else ""
        raise RankError(f"rank {r} of {world} failed{others}: {text}")
    return all(h[1] for h in headers), [h[2] for h in headers]


@contextlib.contextmanager
def rank_zero_output(group: "dist.ProcessGroup | None" = None) -> Iterator[None]:
    "Silence standard output on every rank but rank 0 (errors still go to standard error)."
    if rank(group) == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def on_rank_zero_output(func: Callable) -> Callable:
    "Decorator: `func` prints only on rank 0 (see `rank_zero_output`)."

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with rank_zero_output():
            return func(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def launched(timeout: float | None = None) -> Iterator[None]:
    """Join the process group a launcher (`torchrun`) describes in the environment, and leave it at the end.

    With `WORLD_SIZE` > 1 and no group yet, it initializes one from the environment (`env://`): NCCL with
    each rank on GPU `LOCAL_RANK` when CUDA is available, gloo otherwise. Standard output is silenced
    on ranks other than 0. Without a launcher (or with a group already initialized) it only yields.
    """
    started = False
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        kwargs = {} if timeout is None else dict(timeout=timedelta(seconds=timeout))
        dist.init_process_group(backend, **kwargs)
        started = True
    try:
        with rank_zero_output():
            yield
    finally:
        if started:
            sys.stdout.flush()
            dist.destroy_process_group()


def _broadcast_list(idxs):
    "Rank 0's list of ints, on every rank."
    t = torch.tensor(idxs, dtype=torch.long, device=_device())
    dist.broadcast(t, 0)
    return t.cpu().tolist()


def rank_loader(dl: DataLoader, split_batch: bool = True) -> DataLoader:
    """This rank's share of the fastai loader `dl`, for data-parallel training: a `dl.new` whose items are
    `idxs[rank::world]` of rank 0's order (shuffled anew each epoch, then broadcast).

    With `dl.drop_last` (training) every rank gets `n // world` items, so every rank takes the same
    number of steps; otherwise (validation) shares differ by at most one and every item is read once.
    With `split_batch` each rank's batch holds `bs // world` items, and with `drop_last` the ranks'
    batches of step `k` together are one process's batch `k` (`idxs[k*bs:(k+1)*bs]`, strided over the
    ranks), for as many steps: the same batches as one process with the same seed.
    """
    world, r = world_size(), rank()
    n = dl.n // world if dl.drop_last else len(range(r, dl.n, world))

    def get_idxs():
        # The original loader's order, drawn as its own iteration would draw it (so one process with
        # the same seed shuffles the same way): step k's `bs` items, over all ranks, are its batch k.
        dl.randomize()
        return _broadcast_list(list(dl.get_idxs()))[r::world][:n]

    sub = dl.new(get_idxs=get_idxs, n=n, bs=dl.bs // world if split_batch else dl.bs)
    # fastai gathers every detached tensor across ranks when WORLD_SIZE is set (one collective per batch,
    # which hangs when shares differ in batches): metrics are summed once per epoch instead (`_AllReduced`).
    sub.to_detach = lambda b, cpu=True, gather=True: to_detach(b, cpu, gather=False)
    return sub


class _AllReduced(Metric):
    "A fastai `AvgMetric`/`AvgLoss` whose `value` sums its total and count over every rank: exact over all data."

    def __init__(self, metric):
        self.metric = metric

    @property
    def name(self):
        return self.metric.name

    def reset(self):
        self.metric.reset()

    def accumulate(self, learn):
        self.metric.accumulate(learn)

    @property
    def value(self):
        m = self.metric
        sums = torch.tensor([float(m.total), float(m.count)], dtype=torch.float64, device=_device())
        dist.all_reduce(sums)
        total, count = sums.tolist()
        return torch.tensor(total / count) if count else None


class DDPTrainer(Callback):
    """Train a fastai `Learner` with PyTorch `DistributedDataParallel` on every rank of the process group.

    The model is wrapped in `DistributedDataParallel` (gradients averaged over ranks in the backward
    pass; BatchNorm layers made `SyncBatchNorm` on GPUs) and each loader replaced by `rank_loader`:
    each rank reads its share of every epoch's shuffled items. With `split_batch` (default) each rank
    loads `bs // world` items per batch, so a step still sees `bs` items, an epoch has as many steps as
    in one process and the protocol is the single-process one; otherwise each rank loads `bs` (fastai's
    convention). The validation loss and the metrics averaged per batch (`AvgMetric`, e.g. `accuracy`)
    are summed over every rank once per epoch, so they are exact over the whole validation set (other
    metrics, e.g. `AccumMetric`s, see only the rank's share). Ranks other than 0 log nothing.

    fastai's own `DistributedTrainer` (`Learner.distrib_ctx`) does the same through Accelerate, which
    specnorm does not require.

    Example:
        >>> learn = Learner(dls, model, metrics=accuracy, cbs=ddp_callbacks())   # doctest: +SKIP
    """

    order = 11  # as fastai's DistributedTrainer: after TrainEvalCallback has moved the model, before Recorder

    def __init__(self, sync_bn: bool = True, split_batch: bool = True):
        self.sync_bn, self.split_batch = sync_bn, split_batch

    def before_fit(self) -> None:
        world, model = world_size(), self.learn.model
        if self.split_batch and any(dl.bs % world for dl in self.dls.loaders):
            raise ValueError(
                f"batch sizes {[dl.bs for dl in self.dls.loaders]} do not split evenly over {world} ranks: "
                f"use multiples of {world}"
            )
        device = next(model.parameters()).device
        if self.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.learn.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        self.old_loaders, self.old_metrics, self.old_loss = list(self.dls.loaders), self.learn.metrics, None
        self.learn.dls.loaders = [rank_loader(dl, self.split_batch) for dl in self.old_loaders]
        self.learn.metrics = [_AllReduced(m) if isinstance(m, AvgMetric) else m for m in self.learn.metrics]
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None:
            # through vars(): a callback's setattr warns about shadowing the learner's `loss`
            self.old_loss, vars(recorder)["loss"] = recorder.loss, _AllReduced(recorder.loss)
        if rank():
            self.learn.logger = noop

    def after_fit(self) -> None:
        self.learn.model, self.learn.dls.loaders = self.learn.model.module, self.old_loaders
        self.learn.metrics = self.old_metrics
        if self.old_loss is not None:
            vars(self.learn.recorder)["loss"] = self.old_loss


def ddp_callbacks(**kwargs) -> list[Callback]:
    "`[DDPTrainer(**kwargs)]` under a process group of several ranks, `[]` in one process: for `Learner(cbs=...)`."
    return [DDPTrainer(**kwargs)] if is_distributed() else []
