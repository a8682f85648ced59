"""Commands for moving from nn-Meter: import-nnmeter."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnmeter.cli.main import command
from nnmeter.cli.render import Output
from nnmeter.errors import EXIT_OK, NnmeterError


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="NN_METER_FOLDER", help="an nn-Meter predictor folder (fusion_rules.json, *.pkl)")
    p.add_argument("--name", required=True, help="the name to install it under")
    p.add_argument("--version", default="1.0", help="its version (default 1.0, as nn-Meter's published ones)")
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="write the predictor folder here instead of installing it in the user folder",
    )
    p.add_argument("--force", action="store_true", help="replace an installed predictor of the same name and version")


@command(
    "import-nnmeter",
    "import an nn-Meter predictor folder (its pickles read without running them) and install it",
    _import_arguments,
)
def _cmd_import_nnmeter(args: argparse.Namespace) -> int:
    from nnmeter.compat.nnmeter_format import import_nnmeter
    from nnmeter.predictor.artifact import read_manifest
    from nnmeter.predictor.registry import user_predictors_dir

    out = Output()
    dest = Path(args.output) if args.output else user_predictors_dir() / f"{args.name}-{args.version}"
    if dest.exists() and not args.force and not args.output:
        raise NnmeterError(f"{dest} already exists ({args.name}@{args.version} is installed)", "pass --force")
    with out.reporter() as reporter:
        folder = import_nnmeter(
            args.folder, dest, name=args.name, version=args.version, overwrite=args.force, reporter=reporter
        )
    manifest = read_manifest(folder)
    out.line(
        f"{manifest.name}@{manifest.version}: {len(manifest.kernels)} kernel predictors ({manifest.origin}) "
        f"at {folder}; digest {manifest.digest}"
    )
    out.line(
        f"predicts nn-Meter's numbers (mode nnmeter-compat): nnmeter-build predict --predictor {manifest.name} MODEL"
    )
    return EXIT_OK
