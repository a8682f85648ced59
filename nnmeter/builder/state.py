"""The keys under which a campaign keeps its progress in the store's ``state`` table, all in one place.

A *setup* is one device, backend and measurement protocol: what the kernels step trained under, and what
the evaluation measured under.
"""

from __future__ import annotations


def setup_key(device: str, backend: str, protocol_key: str) -> str:
    return f"{backend}|{device}|{protocol_key}"


def step_key(step: str) -> str:
    """A campaign step's record: its fingerprint, detail and time when it last finished without failures."""
    return f"campaign/step/{step}"


def kernel_result_key(setup: str, kernel: str) -> str:
    """A trained kernel's :class:`~nnmeter.builder.kernels.KernelResult`."""
    return f"kernels/result/{setup}/{kernel}"


def kernel_plan_key(setup: str, kernel: str) -> str:
    """A kernel's fine-grained sample lists, saved as soon as they are planned (a resumed run measures them)."""
    return f"kernels/plan/{setup}/{kernel}"


#: The setup (device, backend, protocol) the latest training ran under; ``package`` reads it.
LATEST_TRAINING = "kernels/latest-setup"

#: Per setup, the first of the evaluation's two measurement passes (measurement ids, latencies, device time).
EVALUATION_FIRST_PASS = "evaluation/first-pass"
