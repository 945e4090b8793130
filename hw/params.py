"""Checking constructor parameters: one validator for every integer parameter.

Pure Python (no Amaranth), so the simulation's own configurations (the DRAM
and AXI memory models) use it too and say the same thing the same way.
"""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value, lo: int, hi: int | None = None, *, power_of_two: bool = False) -> int:
    """``value`` if it is an integer (not a bool) in ``lo..hi`` (``hi`` None: no
    upper bound), and a power of two when asked; else ValueError naming ``name``."""
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= lo
          and (hi is None or value <= hi) and (not power_of_two or value & (value - 1) == 0))
    if not ok:
        kind = "a power of two" if power_of_two else "an integer"
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {kind} {bound}, not {value!r}")
    return value
