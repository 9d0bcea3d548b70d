"""The ``gfsprune`` command line: argument parsing and error reporting only.

Each subcommand parses its options here and calls the library; a ``GfsPruneError`` (bad input
the user can fix) is printed as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gfsprune._version import __version__
from gfsprune.errors import GfsPruneError

Handler = Callable[[argparse.Namespace], int | None]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _theory(args: argparse.Namespace) -> None:
    from gfsprune import twolayer

    result = twolayer.rates_experiment(quick=args.quick, seed=args.seed)
    paths = twolayer.save_rates(result, args.out)
    print(twolayer.format_slopes(result))
    print("wrote " + ", ".join(str(p) for p in paths))


def _add_theory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory",
        help="reproduce the paper's two-layer convergence rates (loss vs. subnetwork size)",
        description="Greedy forward selection vs. random subsets, backward elimination and "
        "training from scratch on a mean-field two-layer network; writes rates.png and "
        "rates.json and prints the fitted log-log slopes.",
    )
    p.add_argument("--out", type=Path, default=Path("gfsprune-theory"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a smaller run (seconds) for smoke tests")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_theory, command_name="theory")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per command."""
    parser = _Parser(
        prog="gfsprune",
        description="Structured pruning by greedy forward selection (Ye et al., ICML 2020).",
    )
    parser.add_argument("--version", action="version", version=f"gfsprune {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_theory(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except GfsPruneError as err:
        print(f"gfsprune {args.command_name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gfsprune: interrupted; progress saved so far can be resumed.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
