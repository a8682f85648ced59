"""The driver of the lab tests: measure ``-n`` relu kernel models of a workspace on its lab, as a campaign step
does (the workspace's lock, its lab open, a measuring session: prepare, then measure), and print a JSON line
with what was measured. Run: ``python tests/lab_driver.py WS -n 12``; ``--prepare-only`` converts and stops."""

from __future__ import annotations

import argparse
import json
import sys

from nnmeter.builder.workspace import Workspace
from nnmeter.errors import NnmeterError
from nnmeter.measurement import kernel_spec
from nnmeter.progress import Reporter


def configs(n: int) -> list[dict]:
    """``n`` distinct tiny relu kernels (8..8+n-1 channels on 8x8)."""
    return [{"HW": 8, "CIN": 8 + i} for i in range(n)]


class Notes(Reporter):
    def note(self, text: str, *, warning: bool = False) -> None:
        print(("WARNING " if warning else "") + text, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        with Workspace.open(args.workspace) as ws, ws.lock(), ws.open_lab(Notes()):
            backend = ws.connect()
            with backend:
                session = ws.session(backend, workers=1, reporter=Notes())
                prepared = session.prepare([kernel_spec("relu", c) for c in configs(args.n)])
                if args.prepare_only:
                    session._anchors()
                    print(json.dumps({"prepared": sum(p.ok for p in prepared)}), flush=True)
                    return 0
                measured = session.measure([p.record for p in prepared if p.record is not None])
                print(json.dumps({"measured": {m.model_id: m.unit for m in measured}}), flush=True)
    except NnmeterError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
