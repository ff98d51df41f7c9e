"""The host-read guard itself: it must catch every kind of host read, and let device-side work through."""

import pytest
import torch
from conftest import HOST_READS, HostReadError, no_host_reads


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.sum().item(),
        lambda t: t.tolist(),
        lambda t: bool(t.sum() > 0),
        lambda t: float(t.sum()),
        lambda t: int(t.sum()),
        lambda t: [0, 1][t.argmax()],
        lambda t: t.cpu(),
        lambda t: t.numpy(),
        lambda t: __import__("numpy").asarray(t),
        lambda t: torch.cuda.synchronize(),
    ],
)
def test_guard_catches_each_host_read(read):
    t = torch.arange(4.0)
    with pytest.raises(HostReadError), no_host_reads():
        read(t)


def test_guard_lets_device_work_through_and_restores_torch():
    t = torch.arange(4.0)
    with no_host_reads():
        y = torch.where(t > 1, t * 2, -t).sum(0, keepdim=True)
    assert y.item() == 9.0  # restored after the block
    assert all(getattr(torch.Tensor, name).__name__ != "read" for name in HOST_READS)
