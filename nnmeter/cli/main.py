"""``nnmeter-build``: the parser, the command registry and the one exit-code policy.

Each subcommand is a handler registered with :func:`command` in one of the ``commands_*`` modules, in the
order a user meets them. Handlers import the parts they use when they run, so ``--help`` is fast and
``predict`` on a .tflite file does not load TensorFlow.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable

from nnmeter import __version__
from nnmeter.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, NnmeterError

_EPILOG = f"""\
A typical session:
  nnmeter-build init ws --backend tflite-local   # a workspace with campaign.yaml
  nnmeter-build connect ws                       # check the device, one real measurement
  nnmeter-build run ws                           # rules -> kernels -> predictor -> evaluation -> report
Every command that measures stores each result as soon as it is taken; run it again to resume.

Exit codes: {EXIT_OK} done; {EXIT_FAILED} the work failed (a device that cannot be reached, a measurement or
a kernel that failed); {EXIT_BAD_INPUT} bad input or usage (an argument, file, key or value); \
{EXIT_INTERRUPTED} interrupted.
Output to a pipe or a file is plain rows, never cut; listing commands also take --json.
"""

Handler = Callable[[argparse.Namespace], int]
# name -> (one-line help, add arguments, handler)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of ``nnmeter-build NAME``."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help, arguments, handler)
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    from nnmeter.cli import (  # noqa: F401  (they register)
        commands_build,
        commands_compat,
        commands_lab,
        commands_predict,
        commands_workspace,
    )

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a stopped service or job), taken the way of Ctrl-C: every ``finally`` and ``with``
    on the way out runs (locks released, temporary files removed, workers stopped), and the exit code is 130."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit with 2 (argparse)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return int(args.handler(args) or EXIT_OK)
    except NnmeterError as err:
        print(f"nnmeter-build {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(
            f"nnmeter-build {args.command}: {how}; what was measured is in the store, run the command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def positive(flag: str, value: int | None, minimum: int = 1) -> None:
    """A bad-input error when the number given to ``flag`` is below ``minimum``."""
    if value is not None and value < minimum:
        raise NnmeterError(f"{flag} {value}: must be at least {minimum}")


def workspace_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("workspace", metavar="WS", help="a workspace folder (or its campaign.yaml)")


def workers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=int, metavar="N", help="model conversion processes (default: the campaign's backend setting)"
    )


def json_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
