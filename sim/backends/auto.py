"""``--backend auto``: the fastest RTL backend that runs here."""

from __future__ import annotations

import sys

from sim.backends.base import BackendUnavailable

__all__ = ["auto_backend"]


def auto_backend(unit: dict, maxphyaddr: int, execute_only: bool = True, log=None,
                 top: str = "native") -> str:
    """``verilator`` when its model is cached or can be built now (the build
    prints its own progress line), else ``rtl`` (pysim), saying why in one
    line on ``log`` (default stderr).  ``unit``: the unit parameters the run
    will use (the build is the run's); ``top``: ``native`` or ``nested`` (the
    guest walkers over the unit)."""
    log = sys.stderr if log is None else log
    try:
        from sim.backends.verilator.build import build_model
        build_model(dict(maxphyaddr=maxphyaddr, execute_only=execute_only, **unit, checks=True), top=top)
        return "verilator"
    except (BackendUnavailable, RuntimeError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")
        print(f"the verilator backend cannot run here ({reason}); running on pysim (rtl) instead",
              file=log, flush=True)
        return "rtl"
