"""Drive the pageable-guest workload on a backend and summarise it."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from model.formats import Access, EptConfig, Outcome, PAGE_SIZE
from model.physmem import PhysicalMemory

from .backend import make_backend
from .workload import Guest, GuestLayout, Host, WorkloadOptions

__all__ = ["run_workload", "format_summary", "write_summary"]


def run_workload(opts: WorkloadOptions, backend_name: str = "model", progress=None) -> dict:
    """Run the guest to completion; return the summary dict.

    Every translation is checked against the pmap (``pmap_extract``) and every
    guest load against the last value stored to that GPA.
    """
    opts.validate()
    memory = PhysicalMemory()
    config = EptConfig(memory.maxphyaddr)
    backend = make_backend(backend_name, memory, config)
    layout = GuestLayout(opts.guest_pages)
    host = Host(memory, layout, opts, invept=backend.invept)
    backend.load_eptp(host.eptp.encode())
    guest = Guest(layout, opts)
    outcomes = {o.value: 0 for o in Outcome}
    by_access = {a.name.lower(): 0 for a in Access}
    mismatches: list[str] = []
    translations = cycles_total = cas_retries = 0
    walk_reads = memory.reads
    walk_cases = memory.cases
    started = time.monotonic()
    step = max(opts.accesses // 10, 1)

    def check(gpa, access, t):
        if t.outcome is Outcome.OK:
            want = host.pmap.extract(gpa & ~(PAGE_SIZE - 1))
            if want is None or t.hpa != want | (gpa & (PAGE_SIZE - 1)):
                mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: got HPA {t.hpa:#x}, "
                                  f"pmap maps {want and hex(want)}")
                return False
        elif t.outcome is not Outcome.VIOLATION:
            mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: {t.outcome.value} ({t.reason}) "
                              f"on tables the pmap built")
            return False
        return True

    try:
        for n in range(opts.accesses):
            gpa, access = guest.next()
            by_access[access.name.lower()] += 1
            for attempt in range(2):
                t, cycles = backend.translate(gpa, access)
                translations += 1
                cycles_total += cycles or 0
                cas_retries += t.retries
                outcomes[t.outcome.value] += 1
                if not check(gpa, access, t) or t.outcome is Outcome.OK:
                    break
                if attempt:
                    mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: still a violation "
                                      f"after the host mapped it")
                    break
                host.fault(gpa, access)
            if t.outcome is Outcome.OK:
                word = t.hpa & ~7
                if access is Access.WRITE:
                    memory.write(word, guest.store_value(gpa), source="guest")
                else:
                    got, want = memory.peek(word), guest.expected(gpa)
                    if got != want:
                        mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: data {got:#x} "
                                          f"at HPA {word:#x}, guest stored {want:#x}")
            if progress and (n + 1) % step == 0 and n + 1 < opts.accesses:
                progress(f"  [{100 * (n + 1) // opts.accesses:3d}%] {n + 1}/{opts.accesses} "
                         f"accesses, {host.stats.faults} faults, {host.stats.evictions} evictions, "
                         f"{len(mismatches)} mismatches")
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    walks = translations + cas_retries
    s = host.stats
    return {
        "backend": backend_name,
        "accesses": opts.accesses,
        "translations": translations,
        "outcomes": outcomes,
        "accesses_by_type": by_access,
        "walks": walks,
        "memory_reads": getattr(backend, "walk_reads", None),
        "memory_cases": getattr(backend, "walk_cases", None),
        "cas_retries": cas_retries,
        "cycles": cycles_total if backend_name != "model" else None,
        "cycles_per_walk": (cycles_total / walks) if backend_name != "model" and walks else None,
        "faults": s.faults,
        "evictions": s.evictions,
        "writebacks": s.writebacks,
        "swapins": s.swapins,
        "second_chances": s.second_chances,
        "shootdowns": s.shootdowns,
        "resident_pages": len(host.resident),
        "pmap_resident_count": host.pmap.resident_count,
        "ptp_pages": host.pmap.ptp_count,
        "mismatches": len(mismatches),
        "mismatch_details": mismatches[:20],
        "elapsed_seconds": round(elapsed, 3),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
    }


def format_summary(s: dict) -> str:
    rows = [
        ("backend", s["backend"]),
        ("guest accesses", s["accesses"]),
        ("translations", s["translations"]),
        ("  ok / violation / misconfig / bus_error",
         " / ".join(str(s["outcomes"][k]) for k in ("ok", "violation", "misconfig", "bus_error"))),
        ("walks", s["walks"]),
        ("walker memory reads", s["memory_reads"]),
        ("walker CASes", s["memory_cases"]),
        ("CAS retries", s["cas_retries"]),
        ("cycles", s["cycles"] if s["cycles"] is not None else "n/a (untimed model)"),
        ("cycles per walk", f"{s['cycles_per_walk']:.1f}" if s["cycles_per_walk"] else "n/a"),
        ("EPT faults (pmap_enter)", s["faults"]),
        ("evictions (page daemon)", s["evictions"]),
        ("write-backs (D set)", s["writebacks"]),
        ("page-ins from swap", s["swapins"]),
        ("clock second chances (A set)", s["second_chances"]),
        ("shootdowns (INVEPT)", s["shootdowns"]),
        ("mismatches", s["mismatches"]),
    ]
    w = max(len(k) for k, _ in rows)
    lines = ["", "pageable-guest summary", "-" * (w + 16)]
    lines += [f"{k:<{w}}  {v}" for k, v in rows]
    lines.append("-" * (w + 16))
    for m in s["mismatch_details"]:
        lines.append(f"MISMATCH: {m}")
    lines.append(f"{'PASS' if s['mismatches'] == 0 else 'FAIL'}: {s['translations']} translations, "
                 f"{s['mismatches']} mismatches in {s['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def write_summary(s: dict, path: str | Path) -> None:
    """Write the summary atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(s, indent=2) + "\n")
    os.replace(tmp, path)
