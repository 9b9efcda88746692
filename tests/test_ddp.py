"""DistributedDataParallel over gloo: two processes on halves of a batch train like one on all of it."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import xcorr

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD, BATCH, STEPS = 2, 8, 4


class Tracker(nn.Module):
    """A Siamese tracker in miniature: one backbone for both inputs, then SiamRPN's head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
        self.head = xcorr.UpChannelHead(in_channels=4, anchors=1)

    def forward(self, x, z):
        return self.head(self.backbone(x), self.backbone(z))


def data():
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(BATCH, 2, 16, 16, generator=g), torch.randn(BATCH, 2, 8, 8, generator=g)
    cls, loc = torch.randn(BATCH, 2, 9, 9, generator=g), torch.randn(BATCH, 4, 9, 9, generator=g)
    return [t.double() for t in (x, z, cls, loc)]


def train(model, x, z, cls, loc):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        out_cls, out_loc = model(x, z)
        loss = nn.functional.mse_loss(out_cls, cls) + nn.functional.mse_loss(out_loc, loc)
        loss.backward()
        opt.step()


def worker(rank, port, initial, results):
    # Gloo would otherwise pick the interface of the host name; these processes talk over loopback.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = Tracker().double()
        model.load_state_dict(initial)
        ddp = nn.parallel.DistributedDataParallel(model)
        half = BATCH // WORLD
        train(ddp, *(t[rank * half : (rank + 1) * half] for t in data()))
        torch.save(model.state_dict(), os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_halves_match_one_on_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    initial = Tracker().double().state_dict()
    mp.spawn(worker, args=(free_port(), initial, str(tmp_path)), nprocs=WORLD, join=True)

    single = Tracker().double()
    single.load_state_dict(initial)
    train(single, *data())
    expected = single.state_dict()
    for rank in range(WORLD):
        trained = torch.load(tmp_path / f"rank{rank}.pt")
        assert trained.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(trained[name], value, rtol=1e-10, atol=1e-12, msg=name)
            assert not torch.equal(value, initial[name]), f"{name} did not train"
