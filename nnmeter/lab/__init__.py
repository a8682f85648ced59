"""A device lab: one campaign measured on several units (phones, boards) of one device type, on one or many hosts.

``devices:`` in campaign.yaml lists the units (each overrides keys of ``backend:``), ``cluster:`` says how they
are driven: ``engine: local`` (a thread per unit in this process, no Ray) or ``engine: ray`` (one Ray actor per
unit, pinned by the custom resource ``nnmeter-unit:<unit>`` to the host the unit is attached to; Ray is imported
only then). The lab is a :class:`~nnmeter.measurement.dispatch.BatchDispatcher`: a measuring session hands it
its batches and stores each one as a unit finishes it, with the unit and its host. See docs/devices/lab.md.

Names load on first use (``from nnmeter.lab import LabBackend``), so importing the package loads no Ray.
"""

from nnmeter.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("ClusterSettings", "Unit", "load_units", "unit_resource", "ENGINES"), "settings"),
        **dict.fromkeys(("Lab", "UnitState", "speed_ratios"), "engine"),
        **dict.fromkeys(("LabBackend", "open_lab"), "backend"),
        **dict.fromkeys(("UnitWorker", "UnitInfo", "UnitLost"), "unit"),
    },
)
