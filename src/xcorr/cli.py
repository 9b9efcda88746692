"""Command line: ``python -m xcorr {demo}``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcorr", description="Exact, fast cross-correlation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the Siamese trackers' four correlations at full size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
