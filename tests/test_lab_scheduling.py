"""The lab's scheduler and configuration, without devices: the units are simulated phones (an Engine whose
units take a modelled time per batch and can be lost), everything else is the real scheduler."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path

import pytest

from nnmeter.backends.base import MeasureResult, MeasureStatus, ModelFile
from nnmeter.backends.protocol import LatencyStats, MeasurementProtocol
from nnmeter.builder.campaign import load_campaign
from nnmeter.errors import ConfigError, WorkFailed
from nnmeter.lab.engine import Engine, Lab, speed_ratios
from nnmeter.lab.settings import ClusterSettings, Unit
from nnmeter.lab.unit import UnitInfo, UnitLost
from nnmeter.measurement.dispatch import BatchJob

PROTOCOL = MeasurementProtocol(batch_size=2)
ANCHORS = [ModelFile(f"anchor{i}", Path(f"/a{i}.tflite"), "tflite") for i in range(3)]


class SimulatedPhones(Engine):
    """Phones that measure a batch in ``seconds`` each, ``speed`` times the anchors' typical latency; a phone in
    ``gone`` is lost (its call raises UnitLost) until it is removed from the set."""

    def __init__(self, speed: dict[str, float], seconds: float = 0.01) -> None:
        self.speed, self.seconds = speed, seconds
        self.gone: set[str] = set()
        self.measured: list[tuple[str, tuple[str, ...]]] = []
        self.pool = ThreadPoolExecutor(8)

    def start(self, unit: Unit) -> str:
        return unit.id

    def connect(self, worker: str) -> Future:
        return self.pool.submit(self._connect, worker)

    def _connect(self, unit: str) -> UnitInfo:
        if unit in self.gone:
            raise UnitLost(f"{unit}: no such device")
        return UnitInfo(unit, f"host-of-{unit}", f"adb:{unit}", "simulated", {"benchmark_model": "sha256:x"})

    def measure(self, worker: str, files, protocol) -> Future:
        return self.pool.submit(self._measure, worker, tuple(f.id for f in files))

    def _measure(self, unit: str, ids: tuple[str, ...]) -> list[MeasureResult]:
        time.sleep(self.seconds)
        if unit in self.gone:
            raise UnitLost(f"{unit}: device offline")
        self.measured.append((unit, ids))
        return [MeasureResult(i, MeasureStatus.OK, _stats(self.speed[unit])) for i in ids]

    def wait(self, pending, timeout):
        done, _ = wait_futures(pending, timeout=timeout, return_when="FIRST_COMPLETED")
        return list(done)

    def result(self, pending):
        return pending.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def _stats(ms: float) -> LatencyStats:
    return LatencyStats.from_rounds([[ms]] * 3)


def jobs(n: int) -> list[BatchJob]:
    return [
        BatchJob(
            i,
            (ModelFile(f"m{2 * i}", Path("/x"), "tflite"), ModelFile(f"m{2 * i + 1}", Path("/y"), "tflite")),
            PROTOCOL,
        )
        for i in range(n)
    ]


def lab(engine: SimulatedPhones, **cluster) -> tuple[Lab, list]:
    checks: list = []
    units = [Unit(u, {}, f"devices[{i}]") for i, u in enumerate(engine.speed)]
    settings = ClusterSettings(**{"retry_lost_s": 0.05, "lost_timeout_s": 5.0, **cluster})
    return Lab(engine, units, settings, record_check=checks.append), checks


@pytest.mark.unit
def test_batches_spread_over_the_units_and_each_is_yielded_once():
    engine = SimulatedPhones({"a": 1.0, "b": 1.0, "c": 1.0}, seconds=0.02)
    the_lab, checks = lab(engine)
    done = list(the_lab.dispatch(jobs(12), ANCHORS))
    assert sorted(d.index for d in done) == list(range(12))
    assert {d.unit for d in done} == {"a", "b", "c"} and all(d.host == f"host-of-{d.unit}" for d in done)
    assert {c.unit: c.verdict for c in checks} == {"a": "agrees", "b": "agrees", "c": "agrees"}
    assert all(d.scale == 1.0 and d.runtime_versions == {"benchmark_model": "sha256:x"} for d in done)


@pytest.mark.unit
def test_a_unit_lost_mid_batch_gives_it_back_and_is_used_again_when_it_returns():
    engine = SimulatedPhones({"a": 1.0, "b": 1.0}, seconds=0.03)
    the_lab, _ = lab(engine, check_every=0)
    done = []
    for batch in the_lab.dispatch(jobs(16), ANCHORS):
        done.append(batch)
        if len(done) == 2:
            engine.gone.add("b")  # b's batch in flight fails, and b cannot reconnect
        if len(done) == 8:
            engine.gone.clear()  # b is back
    assert sorted(d.index for d in done) == list(range(16))  # nothing lost, nothing twice
    after = [d.unit for d in done[9:]]
    assert "b" in after  # the unit that returned measured again
    assert any(s["state"] for s in the_lab.states())


@pytest.mark.unit
def test_no_usable_unit_for_lost_timeout_fails_clearly():
    engine = SimulatedPhones({"a": 1.0})
    engine.gone.add("a")
    the_lab, _ = lab(engine, lost_timeout_s=0.3)
    with pytest.raises(WorkFailed, match="no unit of the lab could measure for 0.3 s.*a: a: no such device"):
        list(the_lab.dispatch(jobs(2), ANCHORS))


@pytest.mark.unit
def test_an_outlier_unit_is_scaled_or_excluded():
    speeds = {"a": 1.0, "b": 1.02, "c": 1.5}
    the_lab, checks = lab(SimulatedPhones(speeds), tolerance=0.1, outliers="scale")
    done = list(the_lab.dispatch(jobs(9), ANCHORS))
    verdicts = {c.unit: (c.verdict, round(c.scale, 2)) for c in checks}
    assert verdicts == {"a": ("agrees", 1.0), "b": ("agrees", 1.0), "c": ("scaled", 1.47)}
    assert {d.scale for d in done if d.unit == "c"} == {checks[-1].scale} or all(d.unit != "c" for d in done)

    excluded, checks = lab(SimulatedPhones(speeds), tolerance=0.1, outliers="exclude")
    done = list(excluded.dispatch(jobs(9), ANCHORS))
    assert {c.unit: c.verdict for c in checks}["c"] == "excluded"
    assert "c" not in {d.unit for d in done} and sorted(d.index for d in done) == list(range(9))


@pytest.mark.unit
def test_units_check_again_every_n_batches():
    engine = SimulatedPhones({"a": 1.0})
    the_lab, checks = lab(engine, check_every=2)
    list(the_lab.dispatch(jobs(6), ANCHORS))
    anchor_runs = [ids for _, ids in engine.measured if ids[0].startswith("anchor")]
    assert len(anchor_runs) == 3 and len(checks) == 3  # at the start, after batches 2 and 4


@pytest.mark.unit
def test_speed_ratios_are_to_the_median_unit():
    r = speed_ratios({"a": {"x": 1.0, "y": 2.0}, "b": {"x": 1.1, "y": 2.2}, "c": {"x": 2.0, "y": 4.0}})
    assert r["b"] == pytest.approx(1.0) and r["a"] == pytest.approx(1 / 1.1) and r["c"] == pytest.approx(2 / 1.1)
    assert speed_ratios({"alone": {"x": 3.0}}) == {"alone": pytest.approx(1.0)}


def campaign(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text("backend: {name: tflite-adb, benchmark_model: /data/local/tmp/benchmark_model}\n" + text)
    return path


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, key, message",
    [
        (
            "devices: [{serial: A}, {serial: B}, {serial: A}]\n",
            "devices[2]",
            "unit 'A' is listed twice (also devices[0])",
        ),
        ("devices: [{serial: A}, {remote_dir: /x}]\n", "devices[1].unit", "names no unit"),
        ("devices: [{serial: A, threads: 0}]\n", "devices[0].threads", ""),
        ("devices: [{serial: A, name: tflite-ssh}]\n", "devices[0].name", "share `backend.name`"),
        ("devices: {serial: A}\n", "devices", "expected a list of units"),
        ("cluster: {engine: ray}\n", "cluster", "there are none"),
        ("devices: [{serial: A}]\ncluster: {engine: spark}\n", "cluster.engine", "spark"),
        ("devices: [{serial: A}]\ncluster: {tolerance: -1}\n", "cluster.tolerance", ""),
    ],
)
def test_bad_lab_config_names_the_key(tmp_path, text, key, message):
    with pytest.raises(ConfigError) as caught:
        load_campaign(campaign(tmp_path, text))
    assert caught.value.key_path == key and message in str(caught.value)


@pytest.mark.unit
def test_lab_config_units_override_the_backend(tmp_path):
    c = load_campaign(
        campaign(
            tmp_path,
            "devices:\n  - serial: R5CT1234\n  - serial: 192.168.1.40:5555\n    remote_dir: /data/local/tmp/nnm-b\n",
        )
    )
    assert [u.id for u in c.units] == ["R5CT1234", "192.168.1.40:5555"]
    assert c.units[1].options["remote_dir"] == "/data/local/tmp/nnm-b" and c.units[1].options["threads"] == 1
    assert c.cluster.engine == "local" and c.is_lab
    assert not load_campaign(campaign(tmp_path, "")).is_lab


@pytest.mark.unit
def test_the_default_path_never_imports_ray(tmp_path):
    """status and a run's planning on a campaign of one device, and a lab on the local engine, load no Ray."""
    code = textwrap.dedent(
        f"""
        import sys
        from nnmeter.cli.main import main
        from nnmeter.builder.workspace import Workspace
        from nnmeter.builder.steps import step_status
        assert main(["init", {str(tmp_path / "ws")!r}, "--backend", "tflite-local"]) == 0
        assert main(["status", {str(tmp_path / "ws")!r}]) == 0
        with Workspace.open({str(tmp_path / "ws")!r}) as ws, ws.lock(), ws.open_lab() as lab:
            assert lab is None
            step_status(ws)
        path = {str(tmp_path / "ws" / "campaign.yaml")!r}
        open(path, "a").write("devices: [{{unit: one}}, {{unit: two}}]\\n")
        with Workspace.open({str(tmp_path / "ws")!r}) as ws, ws.lock(), ws.open_lab() as lab:
            assert lab.engine.name == "local"
        assert main(["lab", "status", {str(tmp_path / "ws")!r}]) == 0
        print("ray" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.unit
def test_campaigns_run_together_do_not_share_a_unit(tmp_path):
    from nnmeter.builder.steps import run_campaigns
    from nnmeter.builder.workspace import Workspace
    from nnmeter.errors import NnmeterError

    paths = []
    for name, serials in (("phones-a", ["A1", "X"]), ("phones-b", ["B1", "X"])):
        Workspace.create(tmp_path / name, "tflite-adb").close()
        with open(tmp_path / name / "campaign.yaml", "a") as fh:
            fh.write("devices: [" + ", ".join(f"{{serial: {s}}}" for s in serials) + "]\n")
        paths.append(tmp_path / name)
    workspaces = [Workspace.open(p) for p in paths]
    with pytest.raises(NnmeterError, match=r"devices\[1\]: unit 'X' is in the campaign of .*phones-a too"):
        run_campaigns(workspaces)
    assert all(ws.lock_holder() is None for ws in workspaces)  # refused before any lock or store
