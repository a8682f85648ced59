"""Convert the lab tests' relu models and the drift anchors into a tflite-adb workspace (no device needed)."""

from __future__ import annotations

import argparse
import sys

from lab_driver import configs

from nnmeter.backends import backend_class
from nnmeter.builder.workspace import Workspace
from nnmeter.measurement import kernel_spec


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("-n", type=int, default=8)
    args = parser.parse_args(argv)
    with Workspace.open(args.workspace) as ws:
        with backend_class("tflite-adb")(ws.campaign.backend_options) as backend:
            session = ws.session(backend, workers=1)
            prepared = session.prepare([kernel_spec("relu", c) for c in configs(args.n)])
            assert all(p.ok for p in prepared), [p.error for p in prepared]
            assert len(session._anchors()) == 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
