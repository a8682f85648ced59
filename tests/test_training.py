"""The kernel training loop: end to end on tflite-local with real measurements, resume, packaging, bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import zlib

import numpy as np
import pytest
from conftest import make_workspace

from nnmeter.builder import Workspace, trained_kernels
from nnmeter.cli import main
from nnmeter.predictor.artifact import load_artifact, sha256_file
from nnmeter.predictor.features import feature_matrix
from nnmeter.training import KernelTrainingSettings, Sample, TrainingError, adaptive_training, held_out

KERNEL = "fc"  # converts and measures in a fraction of a second per model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(
        tmp_path_factory.mktemp("train") / "ws",
        protocol={"rounds": 8, "warmup_runs": 2, "max_remeasures": 0},
        kernels={
            "kernels": [KERNEL],
            "init_samples": 30,
            "finegrained_samples": 3,
            "iterations": 1,
            "max_refined_points": 3,
            "target_accuracy": 1.0,
            "min_train_samples": 10,
            "validation_fraction": 0.25,
        },
    )


@pytest.fixture(scope="module")
def first_run(workspace):
    assert main(["train", str(workspace)]) == 0
    with Workspace.open(workspace) as ws:
        setup, results = trained_kernels(ws)
        measurements = sum(s.measurements for s in ws.store.summary().setups)
    return setup, results, measurements


@pytest.mark.e2e
def test_loop_trains_a_regressor_from_real_measurements(first_run, workspace):
    setup, results, _ = first_run
    assert setup["backend"] == "tflite-local" and setup["device"]["id"]
    (result,) = results
    assert result.kernel == KERNEL and result.regressor == "gbt-cost-ratio"
    assert result.failed == 0
    assert result.validation_samples >= 3 and result.train_samples >= 20
    assert result.samples == result.train_samples + result.validation_samples
    assert [r.round for r in result.rounds] == [0, 1]
    assert result.rounds[1].samples >= result.rounds[0].samples  # fine-grained samples were added
    assert result.metrics.n == result.validation_samples
    assert 0 < result.metrics.rmspe < 100  # the regressor learned something about real latencies
    assert (workspace / result.file).is_file()
    # measured kernel models are deleted (kernels.keep_models: false); the store keeps their records
    assert not list((workspace / "models" / "kernel").rglob("*.tflite"))
    with Workspace.open(workspace) as ws:
        assert len(ws.store.models(kind="kernel")) == result.samples


@pytest.mark.e2e
def test_second_run_resumes_without_measuring_again(first_run, workspace, capsys):
    _, (before,), measurements = first_run
    capsys.readouterr()
    assert main(["train", str(workspace), "--kernel", KERNEL]) == 0
    # not a terminal: a line per kernel, not a bar drawn once at the end
    assert f"{KERNEL}: done: {before.samples} samples, ±10 % " in capsys.readouterr().out
    assert not list((workspace / "models" / "kernel").rglob("*.tflite"))  # nor converting again
    with Workspace.open(workspace) as ws:
        _, (after,) = trained_kernels(ws)
        assert sum(s.measurements for s in ws.store.summary().setups) == measurements
    assert after == before  # the finished kernel is not trained again: same file, same scores


@pytest.mark.e2e
def test_a_kernel_trained_again_after_other_batches_is_the_same_file(first_run, workspace):
    """Measurements never change once stored: after more batches were measured (with their drift anchors),
    training the kernel again from the store writes the very same regressor file, byte for byte."""
    from nnmeter.builder import tiny_model_path

    _, (before,), _ = first_run
    path = workspace / before.file
    original = path.read_bytes()
    assert main(["profile", str(workspace), str(tiny_model_path()), "--runs", "6", "--remeasure"]) == 0
    path.unlink()  # its result is stale without the file: the kernel is trained again, measuring nothing
    assert main(["train", str(workspace), "--kernel", KERNEL]) == 0
    assert path.read_bytes() == original


def stored_measurements(workspace) -> int:
    with Workspace.open(workspace) as ws:
        return sum(s.measurements for s in ws.store.summary().setups)


@pytest.mark.e2e
def test_other_settings_train_the_kernel_again(first_run, workspace, capsys):
    with Workspace.open(workspace) as ws:
        _, (before,) = trained_kernels(ws)
    measurements = stored_measurements(workspace)
    capsys.readouterr()
    assert main(["train", str(workspace), "--kernel", KERNEL, "--iterations", "0"]) == 0
    assert re.search(rf"^{KERNEL}: round 0: \d+ samples, ±10 % [\d.]+ %", capsys.readouterr().out, re.M)
    with Workspace.open(workspace) as ws:
        _, (after,) = trained_kernels(ws)
    assert stored_measurements(workspace) == measurements  # trained from the store
    assert after.trained_at > before.trained_at and after.settings["iterations"] == 0
    assert [r.round for r in after.rounds] == [0]


@pytest.mark.e2e
def test_a_new_reading_of_the_measurements_trains_the_kernel_again(first_run, workspace, monkeypatch):
    """Same settings as the run before (iterations 0), but labels read another way (the store's
    LATENCY_READING_VERSION bumped): trained again, from the store."""
    import nnmeter.builder.kernels as training

    assert main(["train", str(workspace), "--kernel", KERNEL, "--iterations", "0"]) == 0  # up to date: kept
    with Workspace.open(workspace) as ws:
        _, (before,) = trained_kernels(ws)
    measurements = stored_measurements(workspace)
    monkeypatch.setattr(training, "LATENCY_READING_VERSION", training.LATENCY_READING_VERSION + 1)
    assert main(["train", str(workspace), "--kernel", KERNEL, "--iterations", "0"]) == 0
    with Workspace.open(workspace) as ws:
        _, (after,) = trained_kernels(ws)
    assert stored_measurements(workspace) == measurements
    assert after.trained_at > before.trained_at
    assert after.settings["latency_reading"] == before.settings["latency_reading"] + 1


@pytest.mark.e2e
def test_package_predicts_the_measured_kernels(first_run, workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    out = tmp_path / "pred"
    assert main(["package", str(workspace), "-o", str(out), "--name", "test-device", "--install"]) == 0
    artifact = load_artifact(out)
    assert artifact.kernels == {KERNEL} and artifact.manifest.backend == "tflite-local"
    with Workspace.open(workspace) as ws:
        pairs = ws.store.latest_measurements(
            artifact.manifest.device_id,
            "tflite-local",
            artifact.manifest.protocol["key"],
            kind="kernel",
            name=KERNEL,
            statuses=["ok", "unstable"],
        )
    configs = [{k: m.config[k] for k in ("CIN", "COUT")} for m, _ in pairs]
    measured = np.array([r.latency_ms for _, r in pairs])
    predicted = artifact.predict(KERNEL, feature_matrix(KERNEL, configs))
    assert np.median(np.abs(predicted / measured - 1)) < 0.2  # trained on them: close, not exact (boosting)
    from nnmeter.predictor.registry import find_predictor

    assert load_artifact(find_predictor("test-device")).manifest.name == "test-device"


@pytest.mark.e2e
def test_a_new_prior_samples_and_trains_the_kernel_again(first_run, workspace, monkeypatch):
    """Same settings, but the prior sampler draws other configs (a new nnmeter): the kernel's saved result and
    fine-grained plan are stale, so its new prior is measured and it is trained on that, not kept."""
    import nnmeter.kernel_gen.samplers as samplers

    assert main(["train", str(workspace), "--kernel", KERNEL, "--iterations", "0"]) == 0  # up to date: kept
    with Workspace.open(workspace) as ws:
        _, (before,) = trained_kernels(ws)
        models_before = len(ws.store.models(kind="kernel"))
    monkeypatch.setattr(samplers, "PRIOR_JITTER", (0.4, 0.6))  # other channel counts than any drawn before
    assert main(["train", str(workspace), "--kernel", KERNEL, "--iterations", "0"]) == 0
    with Workspace.open(workspace) as ws:
        _, (after,) = trained_kernels(ws)
        assert len(ws.store.models(kind="kernel")) >= models_before + after.samples - 2  # measured anew
    assert after.settings["prior"] != before.settings["prior"] and after.trained_at > before.trained_at


@pytest.mark.unit
def test_package_without_training_says_so(tmp_path, capsys):
    root = tmp_path / "empty"
    Workspace.create(root, "tflite-local")
    assert main(["package", str(root)]) == 2
    assert "no trained kernel regressors" in capsys.readouterr().err


# The two failures below cannot be produced on demand with a healthy local runtime, so the loop is given
# measurement outcomes directly (as data: that is what a failed measurement is).

SMALL = KernelTrainingSettings(kernels=[KERNEL], init_samples=12, iterations=0, min_train_samples=20)


@pytest.mark.unit
def test_too_small_training_set_is_a_clear_error():
    def measure(configs, _what):
        return [Sample(c, 0.01 + c["CIN"] * c["COUT"] * 1e-7) for c in configs]

    with pytest.raises(TrainingError, match=r"kernel fc: only \d+ measured training samples .*needs at least 20"):
        adaptive_training(KERNEL, SMALL, measure)


@pytest.mark.unit
def test_all_measurements_failed_is_a_clear_error():
    def measure(configs, _what):
        return [Sample(c, None, error="XNNPACK delegate refused the model") for c in configs]

    with pytest.raises(TrainingError, match="all 12 measurements failed; first error: XNNPACK delegate refused"):
        adaptive_training(KERNEL, SMALL, measure)


@pytest.mark.unit
def test_held_out_split_is_stable_and_near_its_fraction():
    configs = [{"CIN": c, "COUT": 64} for c in range(1, 2001)]
    picked = [held_out(c, 0.2, seed=0) for c in configs]
    assert picked == [held_out(c, 0.2, seed=0) for c in configs]
    assert 0.17 < np.mean(picked) < 0.23
    assert picked != [held_out(c, 0.2, seed=1) for c in configs]


@pytest.mark.e2e
def test_bad_kernel_name_is_refused(workspace, capsys):
    assert main(["train", str(workspace), "--kernel", "convv"]) == 2
    assert "'convv' is not a kernel" in capsys.readouterr().err


def _noisy_fc_latencies(configs, _what):
    """fc latency proportional to its weights, times a +-15 % noise seeded by the configs: always some large
    errors to refine, the same for the same configs."""
    rng = np.random.default_rng(zlib.crc32(json.dumps(configs, sort_keys=True).encode()))
    return [Sample(c, (0.002 + c["CIN"] * c["COUT"] * 2e-7) * rng.uniform(0.85, 1.15)) for c in configs]


@pytest.mark.unit
@pytest.mark.parametrize("target, rounds", [(0.5, [0]), (1.0, [0, 1, 2])])
def test_adaptive_rounds_stop_once_the_target_accuracy_is_reached(target, rounds):
    settings = KernelTrainingSettings(
        kernels=[KERNEL],
        init_samples=40,
        iterations=2,
        finegrained_samples=2,
        max_refined_points=5,
        target_accuracy=target,
    )
    outcome = adaptive_training(KERNEL, settings, _noisy_fc_latencies)
    assert [r.round for r in outcome.rounds] == rounds
    assert outcome.rounds[0].validation.acc10 >= 0.5  # the prior alone meets the lower target
    if len(rounds) > 1:
        assert outcome.samples > outcome.rounds[0].samples  # the refinement rounds measured more
    else:
        assert outcome.samples == outcome.rounds[0].samples


@pytest.mark.unit
def test_pooled_fit_learns_from_the_family_and_scores_on_the_kernels_own_held_out_configs(monkeypatch):
    """conv-bn (60 own samples) with two siblings (400 each) 1.5x and 2x slower, on latencies the cost model
    fits exactly: the WITH_<op> columns keep the members apart, and the scored fit sees no sample of conv-bn's
    held-out configs, its own or a sibling's copy."""
    from conftest import synthetic_latency

    import nnmeter.training.adaptive as adaptive
    from nnmeter.kernel_gen.samplers import sample_configs
    from nnmeter.training import pooled_fit, prior_configs

    kernel, factors = "conv-bn", {"conv-bn": 1.0, "conv-bn-relu": 1.5, "conv-hswish": 2.0}
    settings = KernelTrainingSettings(kernels=list(factors), init_samples=60, iterations=0, min_train_samples=20)

    def samples(member, configs):
        y = synthetic_latency(member, feature_matrix(member, configs)) * factors[member]
        return [Sample(c, float(v)) for c, v in zip(configs, y)]

    own = samples(kernel, prior_configs(kernel, settings))
    held = [s.config for s in own if held_out(s.config, settings.validation_fraction, settings.seed)]
    assert held
    family = {kernel: own}
    for seed, member in enumerate(("conv-bn-relu", "conv-hswish"), start=1):
        family[member] = samples(member, sample_configs(member, 400, "prior", seed=seed) + held)
    fits = []  # the feature rows of every fit, in order: the scored one, then the final one
    make = adaptive.make_regressor

    def recording(*args, **kwargs):
        regressor = make(*args, **kwargs)
        fit = regressor.fit
        regressor.fit = lambda X, y: fits.append(np.asarray(X)) or fit(X, y)
        return regressor

    monkeypatch.setattr(adaptive, "make_regressor", recording)
    regressor, scores = pooled_fit(kernel, family, settings)
    held_rows = {tuple(r) for m in factors for r in feature_matrix(m, held)}
    scored, final = fits
    assert not held_rows & {tuple(r) for r in scored}  # none of the held-out configs, of any member
    assert held_rows <= {tuple(r) for r in final}  # the packaged fit has them all
    assert scores.n == len(held) and scores.acc10 == 1.0
    for member, factor in factors.items():  # each member predicted as itself, not as a sibling
        X = feature_matrix(member, held)
        ratio = regressor.predict(X) / (synthetic_latency(member, X) * factor)
        assert np.all(np.abs(ratio - 1) < 0.1), (member, ratio)


@pytest.mark.e2e
def test_family_kernels_are_fitted_on_each_others_real_measurements(tmp_path):
    """add and addrelu (one family): addrelu, its first kernel, gets the full budget and add member_samples;
    after the loop each regressor is fitted on both kernels' measurements, a second run fits nothing again, and
    a budget given on the command line is the member's too."""
    root = make_workspace(
        tmp_path / "ws",
        protocol={"rounds": 6, "warmup_runs": 2, "max_remeasures": 0},
        kernels={
            "kernels": ["add", "addrelu"],
            "init_samples": 24,
            "member_samples": 14,
            "iterations": 0,
            "min_train_samples": 8,
            "validation_fraction": 0.25,
        },
    )
    assert main(["train", str(root)]) == 0
    with Workspace.open(root) as ws:
        _, results = trained_kernels(ws)
    assert {r.kernel: dict(r.pooled_with) for r in results} == {
        "add": {"add": 14, "addrelu": 24},
        "addrelu": {"add": 14, "addrelu": 24},
    }
    for r in results:
        assert r.metrics.n == r.validation_samples and 0 < r.metrics.rmspe < 100
        assert sha256_file(root / r.file) == r.sha256  # the file on disk is the pooled fit
    assert main(["train", str(root)]) == 0
    with Workspace.open(root) as ws:
        assert trained_kernels(ws)[1] == results
    assert main(["train", str(root), "--kernel", "add", "--init", "24"]) == 0
    with Workspace.open(root) as ws:
        assert {r.kernel: r.samples for r in trained_kernels(ws)[1]}["add"] == 24


@pytest.mark.unit
def test_family_members_after_the_first_get_member_samples_and_no_rounds():
    from nnmeter.training import kernel_settings

    settings = KernelTrainingSettings(
        kernels=["conv-bn", "conv-bn-relu6", "dwconv-bn", "fc"], init_samples=500, member_samples=200, iterations=2
    )
    member = kernel_settings("conv-bn", settings)
    assert (member.init_samples, member.iterations) == (200, 0)
    for lead in ("conv-bn-relu6", "dwconv-bn", "fc"):  # the first of its family in ops order, or alone in it
        assert kernel_settings(lead, settings) == settings
    for unchanged in (
        dataclasses.replace(settings, member_samples=0),
        dataclasses.replace(settings, pool_family=False),
        dataclasses.replace(settings, regressor="nn-meter-rf"),
    ):  # trains each kernel alone
        assert kernel_settings("conv-bn", unchanged) == unchanged
    small = dataclasses.replace(settings, init_samples=100)  # never more than the campaign's own budget
    assert kernel_settings("conv-bn", small).init_samples == 100


@pytest.mark.unit
def test_large_error_configs_are_the_planted_misses_worst_first():
    """120 fc configs whose latency the cost model fits exactly, 3 of them measured 4x, 2.5x and 1.6x slow: those
    3 are the large errors, worst first, and no other config is."""
    from conftest import synthetic_latency

    from nnmeter.kernel_gen import sample_configs
    from nnmeter.training import large_error_configs

    settings = KernelTrainingSettings(error_threshold=0.25, max_refined_points=10)
    configs = sample_configs("fc", 120, sampler="uniform", seed=3)
    y = synthetic_latency("fc", feature_matrix("fc", configs), per_flop=1e-6, per_byte=1e-7)
    planted = {7: 4.0, 40: 2.5, 90: 1.6}
    for i, factor in planted.items():
        y[i] *= factor
    assert large_error_configs("fc", settings.regressor, configs, y, settings) == [configs[i] for i in planted]
