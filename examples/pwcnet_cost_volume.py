"""A PWC-Net-style coarse-to-fine flow network on xcorr's cost volume, trained on synthetic pairs.

Five pyramid levels; from the coarsest to the finest, each level warps the second image's
features by the flow of the level above (upsampled, doubled) with ``grid_sample``, correlates
them with the first image's features over displacements of up to 4 pixels
(``xcorr.nn.LocalCorrelation(4, normalize="mean")``: PWC-Net's 81-channel cost volume, what
flownet2-pytorch's ``Correlation(4, 1, 4, 1, 1)`` computes), and estimates a flow correction
from the volume, the features and the upsampled flow. Each pair is a smooth random image and the
same image moved by a random sub-pixel translation; the loss is PWC-Net's multi-scale one (the
end-point error at every level against the true flow at that scale), and a fixed held-out
batch shows it going down: on a 2-core CPU, 60 steps take about 20 s and take the held-out
end-point error from 3.0 to about 2.5 pixels (translations of up to 4 pixels)::

    python examples/pwcnet_cost_volume.py --steps 60
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import xcorr

SIZE = 64  # image side; the levels are 32, 16, 8, 4 and 2 pixels
CHANNELS = (16, 16, 24, 24, 32)  # features per level, finest first
MAX_DISPLACEMENT = 4  # pixels at every level, as PWC-Net's
LEVEL_WEIGHTS = (0.32, 0.08, 0.02, 0.01, 0.005)  # PWC-Net's loss weights, finest first


def synthetic_pairs(batch: int, max_flow: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Smooth random images, the same images moved by a translation ``flow`` (B, 2) (x, y), and
    ``flow``: the first image's pixel ``p`` is the second's ``p + flow``."""
    canvas = SIZE + 2 * int(max_flow + 2)
    coarse = torch.randn(batch, 3, canvas // 2, canvas // 2, generator=generator)
    image = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)
    flow = (2 * torch.rand(batch, 2, generator=generator) - 1) * max_flow
    # Pixel q of a crop of the canvas starting at `start` (x, y), sampled at q + start - shift.
    start = (canvas - SIZE) / 2
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )

    def crop(shift: torch.Tensor) -> torch.Tensor:
        x = xs + start - shift[:, 0, None, None]
        y = ys + start - shift[:, 1, None, None]
        grid = torch.stack([2 * x / (canvas - 1) - 1, 2 * y / (canvas - 1) - 1], dim=-1)
        return F.grid_sample(image, grid, mode="bilinear", align_corners=True)

    return crop(torch.zeros_like(flow)), crop(flow), flow


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``features`` sampled at each pixel plus ``flow`` (B, 2, H, W) (x, y), zeros outside."""
    _, _, H, W = features.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=flow.dtype, device=flow.device),
        torch.arange(W, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    grid = torch.stack([2 * x / max(W - 1, 1) - 1, 2 * y / max(H - 1, 1) - 1], dim=-1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.1))


class FlowNet(nn.Module):
    """Feature pyramid, then per level: warp, cost volume, flow correction (coarse to fine)."""

    def __init__(self) -> None:
        super().__init__()
        ins = (3, *CHANNELS[:-1])
        self.pyramid = nn.ModuleList(nn.Sequential(conv(i, o, stride=2), conv(o, o)) for i, o in zip(ins, CHANNELS))
        self.correlation = xcorr.nn.LocalCorrelation(MAX_DISPLACEMENT, normalize="mean")
        volume = (2 * MAX_DISPLACEMENT + 1) ** 2
        self.estimators = nn.ModuleList(
            nn.Sequential(conv(volume + c + 2, 32), conv(32, 16), nn.Conv2d(16, 2, 3, 1, 1)) for c in CHANNELS
        )

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        for stage in self.pyramid:
            image = stage(image)
            levels.append(image)
        return levels

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> list[torch.Tensor]:
        """The flow at every level (B, 2, H_l, W_l), in that level's pixels, finest first."""
        pyramid1, pyramid2 = self.features(image1), self.features(image2)
        flows: list[torch.Tensor] = []
        flow = None
        for level in reversed(range(len(CHANNELS))):
            f1, f2 = pyramid1[level], pyramid2[level]
            if flow is None:
                flow = f1.new_zeros(f1.shape[0], 2, *f1.shape[-2:])
            else:
                flow = 2 * F.interpolate(flow, size=f1.shape[-2:], mode="bilinear", align_corners=False)
            volume = F.leaky_relu(self.correlation(f1, warp(f2, flow)), 0.1)
            flow = flow + self.estimators[level](torch.cat([volume, f1, flow], dim=1))
            flows.insert(0, flow)
        return flows


def multiscale_loss(flows: list[torch.Tensor], true_flow: torch.Tensor) -> torch.Tensor:
    """PWC-Net's loss: the weighted end-point error of every level against the true flow there."""
    loss = true_flow.new_zeros(())
    for level, (flow, weight) in enumerate(zip(flows, LEVEL_WEIGHTS)):
        target = (true_flow / 2 ** (level + 1))[:, :, None, None]
        loss = loss + weight * (flow - target).norm(dim=1).sum((1, 2)).mean()
    return loss


def end_point_error(flows: list[torch.Tensor], true_flow: torch.Tensor) -> float:
    """Mean end-point error of the finest flow, upsampled to the image, in image pixels."""
    flow = 2 * F.interpolate(flows[0], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (flow - true_flow[:, :, None, None]).norm(dim=1).mean().item()


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    """Train; returns the training loss of every step and the held-out loss at every report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--max-flow", type=float, default=4.0, help="largest translation, in pixels (default 4)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (default 2e-3)")
    parser.add_argument("--log-every", type=int, default=10, help="report every N steps (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed + 1)
    held_out = synthetic_pairs(16, args.max_flow, torch.Generator().manual_seed(args.seed + 2))
    model = FlowNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    history: dict[str, list[float]] = {"loss": [], "held_out": []}
    start = time.perf_counter()

    def report(step: int) -> None:
        with torch.no_grad():
            flows = model(held_out[0], held_out[1])
            loss = multiscale_loss(flows, held_out[2]).item()
        history["held_out"].append(loss)
        train = f"training loss {history['loss'][-1]:.2f}, " if history["loss"] else ""
        print(
            f"step {step}: {train}held-out loss {loss:.2f}, end-point error {end_point_error(flows, held_out[2]):.2f} px "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    report(0)
    for step in range(1, args.steps + 1):
        image1, image2, true_flow = synthetic_pairs(args.batch_size, args.max_flow, data)
        loss = multiscale_loss(model(image1, image2), true_flow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            report(step)
    return history


if __name__ == "__main__":
    main()
