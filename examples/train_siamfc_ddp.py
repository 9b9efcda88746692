"""Train a small SiamFC tracker on synthetic pairs, in one process or with DistributedDataParallel.

Each pair is cut from a synthetic image: a smooth random background with a textured target. The
template is a crop centred on the target; the search is a larger crop whose centre is shifted by
up to ``--max-shift`` pixels, so the target has to be found. The loss is SiamFC's balanced logistic
loss on a 9x9 response map (a disc of positives around the target); the score reported is the
distance in pixels between the response's peak and the target, on held-out pairs.

    # one process
    python examples/train_siamfc_ddp.py
    # two processes on this machine
    torchrun --nproc_per_node=2 examples/train_siamfc_ddp.py
    # two machines with two processes each: run on both, with --node_rank=0 on HOST0 and 1 on the other
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=2 --master_addr=HOST0 --master_port=29500 \\
        examples/train_siamfc_ddp.py

``--batch-size`` is per process, so N processes train on N times the pairs per step. Processes on
CUDA use NCCL, on CPU gloo; set ``GLOO_SOCKET_IFNAME`` (e.g. ``lo`` on one machine) if gloo picks
the wrong network interface.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import xcorr

CANVAS, TEMPLATE, SEARCH, TARGET = 96, 31, 63, 15
STRIDE = 4  # of the backbone: one response cell is 4 pixels of the search
POSITIVE_RADIUS = 1.5  # response cells around the target labelled positive


class SyntheticPairs(Dataset):
    """Template and search crops of synthetic images; item ``i`` is the same in every process."""

    def __init__(self, size: int, max_shift: int, seed: int) -> None:
        self.size, self.max_shift, self.seed = size, max_shift, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        coarse = torch.randn(1, 3, 6, 6, generator=g)
        image = F.interpolate(coarse, size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)[0]
        c = CANVAS // 2
        r = TARGET // 2
        target = torch.randn(3, TARGET, TARGET, generator=g) * 1.5
        image[:, c - r : c + r + 1, c - r : c + r + 1] = target
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=g)
        t = TEMPLATE // 2
        z = image[:, c - t : c + t + 1, c - t : c + t + 1]
        # The search is centred at target - shift, so the target sits at +shift from its centre.
        sy, sx = c - int(shift[0]), c - int(shift[1])
        s = SEARCH // 2
        x = image[:, sy - s : sy + s + 1, sx - s : sx + s + 1]
        return x.contiguous(), z.contiguous(), shift.float()


class SiamFC(nn.Module):
    """A small fully-convolutional Siamese network: one backbone for both crops, SiamFC's head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3),
        )
        self.head = xcorr.SiamFCHead(out_scale=0.01)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), self.backbone(z))


def labels(shift: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, size, size) map: 1 within POSITIVE_RADIUS cells of the target, else 0."""
    centre = (size - 1) / 2
    cells = torch.arange(size, dtype=shift.dtype, device=shift.device)
    dy = cells.view(1, -1, 1) - (centre + shift[:, 0, None, None] / STRIDE)
    dx = cells.view(1, 1, -1) - (centre + shift[:, 1, None, None] / STRIDE)
    return (dy.square() + dx.square() <= POSITIVE_RADIUS**2).float().unsqueeze(1)


def balanced_logistic_loss(response: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """SiamFC's loss: positives and negatives weigh half each."""
    pos = label.sum().clamp_min(1)
    neg = (1 - label).sum().clamp_min(1)
    weight = label / pos * 0.5 + (1 - label) / neg * 0.5
    return F.binary_cross_entropy_with_logits(response, label, weight, reduction="sum")


def peak_error(response: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Distance in pixels between each response's peak and the target."""
    size = response.shape[-1]
    peak = response.flatten(1).argmax(1)
    found = torch.stack([peak // size, peak % size], 1).to(shift.dtype) - (size - 1) / 2
    return (found * STRIDE - shift).norm(dim=1)


def setup() -> tuple[int, int, torch.device]:
    """Join the process group that torchrun describes in the environment, if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per process and step")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--max-shift", type=int, default=12, help="largest target offset in the search, pixels")
    parser.add_argument("--pairs", type=int, default=4096, help="training pairs")
    parser.add_argument("--val-pairs", type=int, default=128, help="held-out pairs")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="", help="write the trained weights here (rank 0)")
    args = parser.parse_args(argv)

    rank, world, device = setup()
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts them)
    model = SiamFC().to(device)
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    train = SyntheticPairs(args.pairs, args.max_shift, args.seed)
    sampler = DistributedSampler(train, seed=args.seed) if world > 1 else None
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None, drop_last=True)
    val = SyntheticPairs(args.val_pairs, args.max_shift, args.seed + 1)
    optimiser = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)

    val_x, val_z, val_shift = (torch.stack(t).to(device) for t in zip(*(val[i] for i in range(len(val)))))

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            error = peak_error(model(val_x, val_z), val_shift).mean().item()
        model.train()
        return error

    if rank == 0:
        print(f"{world} process(es) on {device}, {args.batch_size * world} pairs per step")
        centre = val_shift.norm(dim=1).mean().item()
        best = (val_shift - (val_shift / STRIDE).round() * STRIDE).norm(dim=1).mean().item()
        print(
            f"step 0: peak error {evaluate():.2f} px (answering the centre: {centre:.2f} px, "
            f"the best answer on {STRIDE}-px cells: {best:.2f} px)"
        )
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, z, shift in loader:
            x, z, shift = x.to(device), z.to(device), shift.to(device)
            response = net(x, z)
            loss = balanced_logistic_loss(response, labels(shift, response.shape[-1]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if rank == 0 and (step % args.log_every == 0 or step == args.steps):
                print(
                    f"step {step}: loss {loss.item():.4f}, peak error {evaluate():.2f} px, "
                    f"{time.perf_counter() - start:.1f} s"
                )
            if step == args.steps:
                break
        epoch += 1

    error = evaluate()
    if rank == 0 and args.save:
        torch.save(model.state_dict(), args.save)
    if world > 1:
        dist.destroy_process_group()
    return error


if __name__ == "__main__":
    main()
