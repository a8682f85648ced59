"""Kernel regressor accuracy against the number of measured samples, on tflite-local (real measurements).

For each kernel and training budget, the adaptive loop of nnmeter.training runs twice on the
same measured data where the two share it (the prior samples, by seed): once with nn-Meter's random
forest (``nn-meter-rf``), once with the default regressor; each regressor drives its own error-driven
fine-grained rounds. Both are then scored on one fixed held-out set of prior-sampled configs per kernel
(a seed the training never uses). Printed: +-10 % accuracy, RMSPE and samples used per budget, and the
device minutes spent measuring each kernel. Everything measured is kept in the workspace's store, so a
second run (or a bigger budget) measures only what is new.

    python bench/kernel_accuracy.py                 # budgets 100..1600, five kernels (hours)
    python bench/kernel_accuracy.py --quick         # budgets 50, 100 and a 40-config test set (minutes)
    python bench/kernel_accuracy.py --kernels fc --budgets 100 200 --workspace /tmp/bench-ws
    python bench/kernel_accuracy.py --kernels conv-bn-relu --repeat   # also: how repeatable the test labels are
    python bench/kernel_accuracy.py --kernels conv-bn-relu --budgets 800 --seed 1   # another training seed
    python bench/kernel_accuracy.py --kernels conv-bn-relu --stored WS   # cross-validate on WS's stored samples

``--repeat`` measures the held-out set a second time in a sibling workspace (``<workspace>-repeat``) and
prints how often the two measurements agree within +-10 %: no regressor can score much above that share
against single measurements.

``--stored WS`` measures nothing: it scores each regressor by k-fold cross-validation on every sample of the
kernel already in the store of the workspace WS (any campaign, a bench workspace or ``nnmeter-build run``'s)
that the training reads a label from (``ok`` and ``unstable`` measurements), with the accuracy of kernels
under 0.05 ms and over it apart. It tells how much a regressor or feature change gains on a device's data
before anything is measured again.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from nnmeter.backends.base import LATENCY_STATUSES  # noqa: E402
from nnmeter.builder import Workspace, workspace_measure  # noqa: E402
from nnmeter.kernel_gen import sample_configs  # noqa: E402
from nnmeter.ops import kernel_type  # noqa: E402
from nnmeter.predictor.features import feature_matrix  # noqa: E402
from nnmeter.training import (  # noqa: E402
    BASELINE_REGRESSOR,
    DEFAULT_REGRESSOR,
    FAST_KERNEL_MS,
    TrainingError,
    adaptive_training,
    config_key,
    latency_metrics,
    make_regressor,
)

KERNELS = ("conv-bn-relu", "dwconv-bn-relu", "fc", "add", "avgpool")
BUDGETS = (100, 200, 400, 800, 1600)
TEST_CONFIGS = 300
TEST_SEED = 90_001  # never a training seed


def budget_settings(base, regressor: str, budget: int):
    """Loop settings that spend at most ``budget`` measured samples in the campaign's proportions: its share of
    prior samples (500 of 800 by default), then its fine-grained rounds, all of them run whatever the
    validation score (no early stop at the campaign's ``target_accuracy``), so that a budget's figure is what
    that many samples give."""
    refined = base.iterations * base.max_refined_points * base.finegrained_samples
    init = int(budget * base.init_samples / (base.init_samples + refined))
    per_point, rounds = max(base.finegrained_samples, 1), max(base.iterations, 1)
    return dataclasses.replace(
        base,
        regressor=regressor,
        init_samples=init,
        max_refined_points=max(1, (budget - init) // rounds // per_point),
        min_train_samples=min(base.min_train_samples, init // 2),
        target_accuracy=1.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(__file__).parent / ".ws-kernel-accuracy",
        help="tflite-local workspace to measure in (made if missing; reused across runs)",
    )
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS))
    parser.add_argument("--budgets", nargs="+", type=int)
    parser.add_argument("--test", type=int, help=f"held-out configs per kernel (default {TEST_CONFIGS})")
    parser.add_argument("--regressors", nargs="+", default=[BASELINE_REGRESSOR, DEFAULT_REGRESSOR])
    parser.add_argument("--quick", action="store_true", help="budgets 50 and 100, 40 test configs")
    parser.add_argument(
        "--seed",
        type=int,
        help="training seed (sampling and fitting; default: the campaign's "
        "kernels.seed); the held-out set stays the same",
    )
    parser.add_argument(
        "--repeat",
        action="store_true",
        help="measure the held-out set again in <workspace>-repeat and print the labels' agreement",
    )
    parser.add_argument(
        "--stored",
        type=Path,
        metavar="WS",
        help="measure nothing: cross-validate the regressors on the samples in WS's store",
    )
    parser.add_argument("--folds", type=int, default=5, help="folds of --stored (default 5)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    for kernel in args.kernels:
        try:
            kernel_type(kernel)
        except ValueError as err:
            parser.error(f"--kernels: {err}")
    if args.stored:
        return _cross_validate(args.stored, args.kernels, args.regressors, args.folds, Console())
    budgets = args.budgets or ((50, 100) if args.quick else BUDGETS)
    n_test = args.test or (40 if args.quick else TEST_CONFIGS)
    console = Console()
    if not (args.workspace / "campaign.yaml").is_file():
        Workspace.create(args.workspace, "tflite-local")
    summary = []
    with Workspace.open(args.workspace) as ws, ws.connect() as backend:
        console.print(
            f"{backend.device_info.description}, {backend.device_info.runtime}; "
            f"protocol {ws.campaign.protocol.key()}; workspace {ws.root}",
            markup=False,
        )
        for kernel in args.kernels:
            measure = workspace_measure(ws, ws.session(backend), kernel)
            test = sample_configs(kernel, n_test, "prior", seed=TEST_SEED)
            test_samples = [s for s in measure(test, "held-out test set") if s.latency_ms is not None]
            test_keys = {config_key(s.config) for s in test_samples}
            X_test = feature_matrix(kernel, [s.config for s in test_samples])
            y_test = [s.latency_ms for s in test_samples]
            table = Table(
                title=f"{kernel}: ±10 % accuracy on {len(y_test)} held-out prior configs "
                f"(median {sorted(y_test)[len(y_test) // 2]:.3f} ms)"
            )
            table.add_column("budget", justify="right")
            for name in args.regressors:
                table.add_column(f"{name}\n±10 % / RMSPE / samples", justify="right")
            for budget in budgets:
                row = [str(budget)]
                for name in args.regressors:
                    settings = budget_settings(ws.campaign.kernels, name, budget)
                    if args.seed is not None:
                        settings = dataclasses.replace(settings, seed=args.seed)
                    started = time.monotonic()
                    try:
                        outcome = adaptive_training(kernel, settings, _excluding(measure, test_keys))
                    except TrainingError as err:
                        row.append(f"failed: {err.message[:40]}")
                        continue
                    m = latency_metrics(y_test, outcome.regressor.predict(X_test))
                    row.append(f"{100 * m.acc10:.1f} % / {m.rmspe:.1f} % / {outcome.samples}")
                    summary.append(
                        (kernel, budget, name, m.acc10, m.rmspe, outcome.samples, time.monotonic() - started)
                    )
                table.add_row(*row)
            console.print(table)
            console.print(
                f"{kernel}: {_device_minutes(ws, backend, kernel):.1f} device minutes measuring "
                f"(all samples of this kernel in the store, test set included)",
                markup=False,
            )
            if args.repeat:
                console.print(_label_agreement(args.workspace, kernel, test_samples), markup=False)
    _print_csv(console, "kernel,budget,regressor,acc10,rmspe,samples,train_seconds", summary)
    return 0


def _print_csv(console: Console, header: str, rows) -> None:
    """The rows under ``header`` as CSV: floats to 4 places, None as an empty field."""
    console.print("\n" + header, markup=False)
    for row in rows:
        console.print(
            ",".join("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row), markup=False
        )


def _cross_validate(workspace: Path, kernels, regressors, folds: int, console: Console) -> int:
    """k-fold cross-validated accuracy of each regressor on the kernels' samples stored in ``workspace``."""
    import numpy as np
    from sklearn.model_selection import KFold

    if not (workspace / "campaign.yaml").is_file():
        console.print(f"{workspace}: not a workspace (no campaign.yaml)", markup=False)
        return 2
    rows = []
    with Workspace.open(workspace) as ws:  # no connection: the device may be a phone that is not attached
        campaign = ws.campaign
        setups = [
            s
            for s in ws.store.summary().setups
            if s.backend == campaign.backend_name and s.protocol_key == campaign.protocol.key()
        ]
        if not setups:
            console.print(f"{workspace}: nothing measured with its campaign's backend and protocol", markup=False)
            return 2
        setup = setups[-1]  # the device measured last
        for kernel in kernels:
            pairs = ws.store.latest_measurements(
                setup.device, setup.backend, setup.protocol_key, kind="kernel", name=kernel, statuses=LATENCY_STATUSES
            )
            configs = [dict(record.config) for record, _ in pairs]
            y = np.array([m.latency_ms for _, m in pairs])
            if len(y) < 2 * folds:
                console.print(
                    f"{kernel}: {len(y)} stored samples in {workspace}, too few for {folds} folds", markup=False
                )
                continue
            X = feature_matrix(kernel, configs)
            table = Table(
                title=f"{kernel}: {folds}-fold cross-validation on {len(y)} stored samples "
                f"({int(np.sum(y < FAST_KERNEL_MS))} under {FAST_KERNEL_MS} ms)"
            )
            for column in ("regressor", "±10 %", "RMSPE", f"±10 % < {FAST_KERNEL_MS} ms", "±10 % other"):
                table.add_column(column, justify="right")
            for name in regressors:
                predicted = np.zeros_like(y)
                for train, test in KFold(folds, shuffle=True, random_state=0).split(X):
                    predicted[test] = make_regressor(name, kernel).fit(X[train], y[train]).predict(X[test])
                m = latency_metrics(y, predicted)
                share = [f"{100 * v:.1f} %" if v is not None else "-" for v in (m.acc10_fast, m.acc10_slow)]
                table.add_row(name, f"{100 * m.acc10:.1f} %", f"{m.rmspe:.1f} %", *share)
                rows.append((kernel, name, folds, m.n, m.acc10, m.rmspe, m.acc10_fast, m.acc10_slow))
            console.print(table)
    _print_csv(console, "kernel,regressor,folds,samples,acc10,rmspe,acc10_fast,acc10_slow", rows)
    return 0


def _excluding(measure, test_keys):
    """The measure function, with test configs dropped from training (a prior draw may repeat one)."""

    def wrapped(configs, what):
        kept = [c for c in configs if config_key(c) not in test_keys]
        return measure(kept, what)

    return wrapped


def _label_agreement(workspace: Path, kernel: str, test_samples) -> str:
    """The held-out set measured again in a sibling workspace: how often two measurements agree within 10 %."""
    import numpy as np

    root = workspace.with_name(workspace.name + "-repeat")
    if not (root / "campaign.yaml").is_file():
        Workspace.create(root, "tflite-local")
    with Workspace.open(root) as ws, ws.connect() as backend:
        again = {
            config_key(s.config): s.latency_ms
            for s in workspace_measure(ws, ws.session(backend), kernel)(
                [s.config for s in test_samples], "held-out again"
            )
        }
    pairs = np.array(
        [
            (s.latency_ms, again[config_key(s.config)])
            for s in test_samples
            if again.get(config_key(s.config)) is not None
        ]
    )
    ratio = pairs[:, 1] / pairs[:, 0]
    ratio /= np.median(ratio)  # the two workspaces' anchors set their own typical speed
    diff = np.abs(ratio - 1)
    slow = pairs[:, 0] >= 0.2
    return (
        f"{kernel}: held-out labels measured twice ({len(pairs)} configs): agree within ±10 % for "
        f"{100 * np.mean(diff <= 0.1):.1f} % (kernels >= 0.2 ms: {100 * np.mean(diff[slow] <= 0.1):.1f} % of "
        f"{slow.sum()}), median |difference| {100 * np.median(diff):.1f} %"
    )


def _device_minutes(ws: Workspace, backend, kernel: str) -> float:
    info = backend.device_info
    pairs = ws.store.latest_measurements(
        info.device, backend.name, ws.campaign.protocol.key(), kind="kernel", name=kernel
    )
    return sum(m.device_seconds for _, m in pairs) / 60


if __name__ == "__main__":
    sys.exit(main())
