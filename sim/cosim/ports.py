"""The unit's port layouts as plain numbers, without importing Amaranth.

The harnesses move raw integers through the ports; all they need from
``hw/layouts.py`` is each struct field's offset and width, the enum values,
``TAG_BITS`` and the counter names.  Importing Amaranth to get them costs
~0.1 s on every run, so :func:`ports` computes them from ``hw.layouts`` once
and caches them (JSON) in the per-user cache (:func:`sim.files.cache_dir`),
keyed by ``hw/layouts.py``'s and this file's bytes and Amaranth's version; without a
writable cache it just computes them.  ``tests/test_ports.py`` holds the
cached numbers to a fresh computation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sim.files import cache_dir, dist_versions, write_atomic

__all__ = ["ports", "compute", "LAYOUTS", "ENUMS"]

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = ("MemRequest", "MemResponse", "TranslateRequest", "TranslateResponse", "InveptRequest",
           "PerfCounters", "LinearRequest", "LinearResponse", "InvvpidRequest", "NestedCounters")
ENUMS = ("Access", "Outcome", "PageSize", "Level", "MemOp", "InveptKind", "LinearOutcome", "InvvpidKind")
_PORTS: dict | None = None


def compute() -> dict:
    """The numbers, from ``hw.layouts`` itself (imports Amaranth)."""
    import hw.layouts as hl
    return {
        "TAG_BITS": hl.TAG_BITS,
        "PERF_EVENTS": list(hl.PERF_EVENTS),
        # the nested unit's VPID/INVVPID bundles and counters may be absent (older hw/): left out
        "NESTED_EVENTS": list(getattr(hl, "NESTED_EVENTS", ())),
        "layouts": {name: {f: [field.offset, field.width] for f, field in getattr(hl, name)}
                    for name in LAYOUTS if hasattr(hl, name)},
        "enums": {name: {m.name: m.value for m in getattr(hl, name)} for name in ENUMS if hasattr(hl, name)},
    }


def _key() -> str:
    h = hashlib.sha256((ROOT / "hw" / "layouts.py").read_bytes())
    h.update(Path(__file__).read_bytes())         # what is computed changes with this file
    h.update(dist_versions("amaranth").encode())
    return h.hexdigest()[:16]


def ports() -> dict:
    """The numbers, cached per user (computed once per layouts.py and Amaranth version)."""
    global _PORTS
    if _PORTS is None:
        path = cache_dir() / "index" / f"ports-{_key()}.json"
        try:
            _PORTS = json.loads(path.read_text())
        except (OSError, ValueError):
            _PORTS = compute()
            try:
                write_atomic(path, json.dumps(_PORTS) + "\n")
            except OSError:
                pass                # no writable cache: computed every run
    return _PORTS
