"""The lab as the campaign's backend: converts on the driver, measures on the units.

:class:`LabBackend` is a :class:`~nnmeter.backends.base.Backend` (what a workspace's ``connect()`` gives when
campaign.yaml lists ``devices:``) and a :class:`~nnmeter.measurement.dispatch.BatchDispatcher`: a measuring
session converts through it (the backend's own conversion pool, on the driver) and hands it its batches. The
units' measurements share one device id in the store (``cluster.device``, default ``lab:<backend>``) and each
records its unit and host.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from nnmeter.backends import create_backend
from nnmeter.backends.base import (
    Backend,
    ConversionJob,
    ConversionResult,
    DeviceInfo,
    MeasureResult,
    ModelFile,
    ProgressCallback,
)
from nnmeter.backends.protocol import MeasurementProtocol
from nnmeter.lab.engine import Engine, Lab
from nnmeter.lab.settings import ClusterSettings, Unit
from nnmeter.measurement.dispatch import BatchDone, BatchJob
from nnmeter.measurement.store import Store
from nnmeter.progress import SILENT, Reporter

#: The store's state key under which the driver keeps the units' states (``lab status`` reads it).
UNITS_STATE = "lab.units"


def open_lab(
    backend_name: str,
    units: Sequence[Unit],
    cluster: ClusterSettings,
    *,
    store: Store | None = None,
    reporter: Reporter = SILENT,
    source: str = "campaign.yaml",
) -> Lab:
    """The lab of ``units`` on ``cluster.engine``, checked before anything is measured: Ray installed, the
    cluster's address answering, every unit advertised by a node (each a ConfigError naming its key)."""
    engine: Engine
    if cluster.engine == "ray":
        from nnmeter.lab.ray_engine import RayEngine

        ray_engine = RayEngine(backend_name, cluster.address, source)
        try:
            ray_engine.check_units(units)
        except BaseException:
            ray_engine.close()
            raise
        engine = ray_engine
    else:
        from nnmeter.lab.local import LocalEngine

        engine = LocalEngine(backend_name, source)
    return Lab(
        engine,
        units,
        cluster,
        reporter=reporter,
        record_check=store.add_unit_check if store is not None else lambda check: None,
        publish=(lambda states: store.set_state(UNITS_STATE, states)) if store is not None else lambda states: None,
    )


class LabBackend(Backend):
    """The campaign's backend over a lab of units: ``convert`` on the driver, ``measure`` and ``dispatch`` on
    the units. ``close()`` closes the lab when this backend opened it (``owns_lab``)."""

    def __init__(
        self,
        backend_name: str,
        options: dict[str, Any],
        lab: Lab,
        *,
        owns_lab: bool = False,
        source: str = "campaign.yaml",
    ) -> None:
        self.converter = create_backend(backend_name, options, source=source)
        super().__init__(self.converter.config)
        self.name = backend_name  # type: ignore[misc]
        self.model_format = self.converter.model_format  # type: ignore[misc]
        self.measured_formats = tuple(getattr(self.converter, "measured_formats", ())) or (self.model_format,)
        self.lab = lab
        self.owns_lab = owns_lab
        units = ", ".join(s.unit.id for s in lab.slots)
        self.device_info = DeviceInfo(
            backend=backend_name,
            device=lab.cluster.device or f"lab:{backend_name}",
            description=f"a lab of {len(lab.slots)} units ({units}) on the {lab.cluster.engine} engine",
            runtime=f"{backend_name} on each unit",
        )

    def connect(self) -> DeviceInfo:
        assert self.device_info is not None
        return self.device_info

    def convert(
        self, jobs: Sequence[ConversionJob], workers: int = 1, progress: ProgressCallback | None = None
    ) -> list[ConversionResult]:
        return self.converter.convert(jobs, workers, progress)

    def dispatch(self, jobs: Sequence[BatchJob], anchors: Sequence[ModelFile]) -> Iterator[BatchDone]:
        assert self.device_info is not None
        protocol_key = jobs[0].protocol.key() if jobs else ""
        return self.lab.dispatch(jobs, anchors, (self.device_info.device, self.name, protocol_key))

    def measure(
        self, models: Sequence[ModelFile], protocol: MeasurementProtocol, progress: ProgressCallback | None = None
    ) -> list[MeasureResult]:
        """Measure ``models`` in batches of ``protocol.batch_size`` on the units (without anchor checks: a
        device check or a profile, not a campaign's measurement)."""
        size = protocol.batch_size
        jobs = [
            BatchJob(i, tuple(models[start : start + size]), protocol)
            for i, start in enumerate(range(0, len(models), size))
        ]
        results: dict[str, MeasureResult] = {}
        for done in self.lab.dispatch(jobs, []):
            results.update((r.model_id, r) for r in done.results)
            if progress:
                progress(len(results), len(models))
        return [results[m.id] for m in models]

    def close(self) -> None:
        try:
            self.converter.close()
        finally:
            if self.owns_lab:
                self.lab.close()
