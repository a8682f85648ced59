"""``nnmeter-build``: build latency predictors for a device, and use them.

Each subcommand is one ``_cmd_<name>`` handler plus its arguments, registered in
``_COMMANDS``. Handlers import the parts they use lazily, so ``--help`` is fast and
``predict`` on a .tflite file does not load TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from nnmeter import __version__
from nnmeter.errors import NnmeterError

_EPILOG = """\
A typical session:
  nnmeter-build init ws --backend tflite-local   # a workspace with campaign.yaml
  nnmeter-build connect ws                       # check the device, one real measurement
  nnmeter-build run ws/campaign.yaml             # rules -> kernels -> predictor -> evaluation
Every command that measures stores each result as soon as it is taken; run it again to resume.
"""

# name -> (one-line help, add arguments, handler)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated function as the handler of ``nnmeter-build NAME``."""
    def register(handler: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, arguments, handler)
        return handler
    return register


# --- commands ----------------------------------------------------------------
# (each part's commands are added below, in the order a user meets them)


# --- entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnmeter-build",
        description="Build inference-latency predictors for a device and predict DNN latency with them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nnmeter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, arguments, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NnmeterError as err:
        print(f"nnmeter-build {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnmeter-build {args.command}: interrupted; what was measured is in the store, "
              "run the command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
