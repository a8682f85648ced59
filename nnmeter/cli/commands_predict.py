"""Commands that use predictors: predictors, predict, ir."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from nnmeter.cli import tables
from nnmeter.cli.main import command, json_argument
from nnmeter.cli.render import Output
from nnmeter.errors import EXIT_OK, NnmeterError


def _predictors_arguments(p: argparse.ArgumentParser) -> None:
    json_argument(p)
    p.add_argument(
        "--verify",
        nargs=2,
        metavar=("NAME_OR_PATH", "SHA256"),
        help="check that a predictor (installed name[@version] or folder) has this digest and that its files "
        "match its manifest: exit 0 if so, 2 with the reason otherwise",
    )


@command(
    "predictors",
    "the installed predictors: name, version, device, accuracy and digest (or --verify one against its digest)",
    _predictors_arguments,
)
def _cmd_predictors(args: argparse.Namespace) -> int:
    from nnmeter.predictor.registry import ENV_VAR, installed_predictors, search_paths

    if args.verify:
        from nnmeter.predictor.artifact import load_artifact
        from nnmeter.predictor.registry import find_predictor

        name_or_path, digest = args.verify
        artifact = load_artifact(find_predictor(name_or_path), sha256=digest)
        m = artifact.manifest
        if args.json:
            print(
                json.dumps(
                    {
                        "verified": True,
                        "name": m.name,
                        "version": m.version,
                        "digest": artifact.digest,
                        "path": str(artifact.path),
                    }
                )
            )
        else:
            Output().line(f"verified: {m.name}@{m.version} at {artifact.path} has digest {artifact.digest}")
        return EXIT_OK
    found = installed_predictors()
    if args.json:
        print(json.dumps([{**dataclasses.asdict(p), "path": str(p.path)} for p in found], indent=1))
        return EXIT_OK
    out = Output()
    out.table(tables.installed_predictors(found))
    out.line(f"searched: {', '.join(str(p) for p in search_paths())} (add folders with {ENV_VAR})")
    return EXIT_OK


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise NnmeterError(f"--input-shape {text!r}: expected comma-separated integers, e.g. 1,224,224,3") from None
    if not dims or any(d <= 0 for d in dims):
        raise NnmeterError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return dims


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--predictor",
        required=True,
        metavar="NAME_OR_PATH",
        help="an installed predictor (name or name@version) or a predictor folder",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_OR_DIR",
        help="model files (.tflite, .onnx, .keras, .h5, .pb, IR .json), SavedModel folders, or folders of model files",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per model with the per-kernel rows")
    p.add_argument(
        "--input-shape", metavar="DIMS", help="fix a dynamic input shape, in the model's own layout, e.g. 1,224,224,3"
    )
    p.add_argument(
        "--sha256",
        metavar="DIGEST",
        help="the predictor's digest (see `nnmeter-build predictors`): refuse a predictor whose digest differs",
    )
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="predict what is supported and list the rest, instead of failing on unsupported ops",
    )


def _model_paths(items: list[str]) -> list[str]:
    from nnmeter.predictor.converters import MODEL_SUFFIXES

    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and not (path / "saved_model.pb").is_file():
            found = sorted(
                str(f)
                for f in path.iterdir()
                if f.suffix.lower() in MODEL_SUFFIXES or (f.is_dir() and (f / "saved_model.pb").is_file())
            )
            if not found:
                raise NnmeterError(
                    f"{path}: a folder with no model files", "model files end in " + ", ".join(MODEL_SUFFIXES)
                )
            paths += found
        else:
            paths.append(item)
    return paths


@command("predict", "predict the latency of model files on a predictor's device, kernel by kernel", _predict_arguments)
def _cmd_predict(args: argparse.Namespace) -> int:
    from nnmeter.compat import load_predictor  # a predictor imported from nn-Meter too

    predictor = load_predictor(args.predictor, sha256=args.sha256)
    shape = _input_shape(args.input_shape)
    results = [predictor.predict(path, shape, strict=not args.no_strict) for path in _model_paths(args.models)]
    if args.json:
        for result in results:
            print(json.dumps(result.to_dict()))
        return EXIT_OK
    out = Output()
    out.table(tables.predictions(predictor.name, results, getattr(predictor, "interval_coverage", 0.0)))
    for r in results:
        stand_ins = sorted({k.stand_in for k in r.kernels if k.stand_in})
        if stand_ins:
            out.line(f"{r.model}: {len(stand_ins)} kernel shape(s) predicted by a stand-in, e.g. {stand_ins[0]}")
    return EXIT_OK


def _ir_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model file or SavedModel folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json", help="where to write the IR graph")
    p.add_argument("--input-shape", metavar="DIMS", help="fix a dynamic input shape, e.g. 1,224,224,3")


@command("ir", "export a model's IR graph (the ops, shapes and edges the predictor sees) as JSON", _ir_arguments)
def _cmd_ir(args: argparse.Namespace) -> int:
    from nnmeter.predictor.converters import to_graph

    graph = to_graph(args.model, _input_shape(args.input_shape))
    path = graph.save(args.output)
    counts = ", ".join(f"{op} {n}" for op, n in sorted(graph.op_counts().items()))
    Output().line(f"{path}: {len(graph.nodes)} nodes ({counts})")
    return EXIT_OK
