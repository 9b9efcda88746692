"""Command line: ``python -m xcorr {demo,bench}``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcorr", description="Exact, fast cross-correlation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the Siamese trackers' four correlations at full size")
    bench = sub.add_parser("bench", help="time xcorr against its peers and print a table")
    bench.add_argument("--suite", default="siamese", choices=["siamese", "match", "all"],
                       help="which suite to run (default: siamese)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="FILE", help="also draw the ratios as a PNG chart")
    bench.add_argument("--repeats", type=int, default=7, help="timed calls per contender (default: 7)")
    bench.add_argument("--device", default="cpu", help="device to run on, e.g. cpu or cuda (default: cpu)")
    bench.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main()
    elif args.command == "bench":
        return _bench(args)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .benchmarks import runner

    suites = list(runner.SUITES) if args.suite == "all" else [args.suite]
    if args.threads is not None:
        if args.threads < 1:
            print(f"xcorr bench: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        with torch.device(args.device):
            runner.run(suites, repeats=args.repeats, json_path=args.json, plot_path=args.plot)
    except runner.Unavailable as error:
        print(f"xcorr bench: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
