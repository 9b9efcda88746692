import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_siamfc_ddp.py"
TINY = ["--steps", "4", "--batch-size", "4", "--pairs", "32", "--val-pairs", "8", "--log-every", "2"]


def load_example():
    spec = importlib.util.spec_from_file_location("train_siamfc_ddp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pairs_put_the_target_at_the_labelled_place():
    example = load_example()
    x, z, shift = example.SyntheticPairs(4, max_shift=12, seed=0)[3]
    assert x.shape == (3, example.SEARCH, example.SEARCH) and z.shape == (3, example.TEMPLATE, example.TEMPLATE)
    # The template's centre reappears in the search at +shift from its centre.
    r, c, s = example.TARGET // 2, example.TEMPLATE // 2, example.SEARCH // 2
    dy, dx = int(shift[0]), int(shift[1])
    torch.testing.assert_close(
        x[:, s + dy - r : s + dy + r + 1, s + dx - r : s + dx + r + 1], z[:, c - r : c + r + 1, c - r : c + r + 1]
    )
    label = example.labels(shift[None], 9)
    assert label[0, 0, round(4 + dy / 4), round(4 + dx / 4)] == 1 and 1 <= label.sum() <= 9


def test_one_process(tmp_path, capsys):
    error = load_example().main([*TINY, "--save", str(tmp_path / "siamfc.pt")])
    assert 0 <= error < 40
    out = capsys.readouterr().out
    assert "1 process(es) on cpu" in out and "step 4: loss" in out
    assert "backbone.0.weight" in torch.load(tmp_path / "siamfc.pt")


def test_torchrun_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(EXAMPLE),
        *TINY,
        "--save",
        str(tmp_path / "w.pt"),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es) on cpu, 8 pairs per step" in run.stdout and "step 4: loss" in run.stdout
    assert (tmp_path / "w.pt").exists()


PWCNET = Path(__file__).resolve().parents[1] / "examples" / "pwcnet_cost_volume.py"


def test_pwcnet_cost_volume_trains(capsys):
    spec = importlib.util.spec_from_file_location("pwcnet_cost_volume", PWCNET)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    image1, image2, flow = example.synthetic_pairs(2, 3.0, torch.Generator().manual_seed(0))
    # The first image's pixel p is the second's p + flow: warping the second image by the flow
    # gives the first back (up to the blur of two bilinear resamplings), by minus the flow it does not.
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))

    def error(sign):
        back = example.warp(image2, sign * flow[:, :, None, None].expand(2, 2, *image1.shape[-2:]))
        return (back - image1)[inner].abs().mean().item()

    assert error(1) < 0.3 * error(-1) and error(1) < 0.3 * error(0)
    history = example.main(["--steps", "20", "--log-every", "10"])
    assert len(history["loss"]) == 20 and len(history["held_out"]) == 3
    assert history["held_out"][-1] < 0.9 * history["held_out"][0]
    out = capsys.readouterr().out
    assert "step 0: held-out loss" in out and "step 20: training loss" in out
