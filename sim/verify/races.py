"""Host pmap operations racing walks at every cycle offset (``python -m sim races``).

For each pmap operation — ``clear_reference``, ``clear_modify``, ``protect``
(read-only), ``remove`` (evict the page) and ``enter`` (map the page to a new
frame) — each access kind, a cold (TLB flushed) and a warm (cached) start,
and every cycle offset from the request to well past a cold walk with its
A/D CASes: submit one translation, let the clock run that many cycles, run
the operation (its shootdown reaches INVEPT), finish the translation, then
translate the page again.  Checked, beyond the scoreboard on every response:

- **no lost or duplicated response**: the request is answered once, nothing
  is left in flight;
- **no A/D resurrection**: if the entry holds A (or D) after the host
  cleared it, a walker CAS set it after the clear, on the cleared value;
- **no stale translation after INVEPT**: the translation after the
  operation agrees with the pmap (``pmap_extract`` and the new protection),
  independently of the scoreboard's window;
- the walker's only stores are A/D CASes (the DRAM model's check).
"""

from __future__ import annotations

import argparse
import sys

from dataclasses import dataclass, field

from model.formats import EPT_A, EPT_D, Access, EptConfig, Outcome, PAGE_SIZE
from model.physmem import PhysicalMemory
from model.pmap import VM_PROT_READ

from sim.backends.base import make_backend
from sim.cosim.workload import GuestLayout, Host, WorkloadOptions
from pathlib import Path
from sim.files import write_json
from sim.options import (positive, add_unit_options, unit_kwargs, output_path, progress_printer,
                         add_reliability_option, UsageError)

__all__ = ["RaceOptions", "RaceReport", "run_races", "OPS"]

OPS = ("clear_reference", "clear_modify", "protect", "remove", "enter")
NESTED_MAX_OFFSET = 320       # past a cold 2D walk of the races' world (160-250 cycles) and its A/D CASes
NESTED_STEP = 8


@dataclass
class RaceOptions:
    backend: str = "rtl"
    offsets: range = range(0, 72)
    ops: tuple = OPS
    accesses: tuple = (Access.READ, Access.WRITE, Access.FETCH)
    starts: tuple = ("cold", "warm")
    ad: bool = True
    unit: dict = field(default_factory=dict)
    watchdog: int = 20_000
    nested: bool = False          # the nested unit's races (sim.verify.races_nested); ops are then its own

    def __post_init__(self):
        if self.nested and self.ops == OPS:
            from sim.verify.races_nested import NESTED_OPS
            self.ops = NESTED_OPS

    def validate(self) -> None:
        if self.nested:
            from sim.backends.base import backend_class
            cls = backend_class(self.backend)
            if not cls.nested:
                from sim.backends.base import BackendUnavailable
                raise BackendUnavailable(f"the {self.backend} backend cannot run the nested unit yet: "
                                         f"use --backend rtl, or races without --nested")
            from sim.verify.races_nested import NESTED_OPS
            bad = [op for op in self.ops if op not in NESTED_OPS]
        else:
            bad = [op for op in self.ops if op not in OPS]
        if bad:
            raise ValueError(f"unknown race operation {bad[0]!r}")


@dataclass
class RaceReport:
    races: int = 0
    translations: int = 0
    by_op: dict = field(default_factory=dict)
    overlapped: int = 0          # races whose operation landed while the walk was in flight
    cas_lost: int = 0            # walker CASes that found the entry changed and retried
    failures: list = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)


class _World:
    def __init__(self, opts: RaceOptions):
        self.memory = PhysicalMemory()
        config = EptConfig(self.memory.maxphyaddr)
        self.backend = make_backend(opts.backend, self.memory, config, watchdog=opts.watchdog,
                                    unit=dict(opts.unit))
        wopts = WorkloadOptions(guest_pages=64, host_frames=48, ad=opts.ad, accesses=1)
        self.layout = GuestLayout(wopts.guest_pages)
        self.host = Host(self.memory, self.layout, wopts, invept=self.backend.invept)
        self.backend.load_eptp(self.host.eptp.encode())
        self.harness = self.backend.harness
        self.stores: list[tuple[int, int, int, int, str]] = []     # (seq, addr, old, new, source)
        self.memory.observe(self._on_store)

    def _on_store(self, addr, old, new, source):
        self.stores.append((self.backend.history.seq, addr, old, new, source))


def run_races(opts: RaceOptions, progress=None) -> RaceReport:
    opts.validate()
    if opts.nested:
        from sim.verify.races_nested import run_nested_races
        return run_nested_races(opts, progress)
    w = _World(opts)
    rep = RaceReport()
    n = 0
    try:
        for op in opts.ops:
            for access in opts.accesses:
                for start in opts.starts:
                    for offset in opts.offsets:
                        pages = w.layout.code_pages if access is Access.FETCH else w.layout.data_pages
                        page = pages[n % len(pages)]
                        n += 1
                        _race(w, rep, op, access, start, offset, page)
                if progress:
                    progress(f"  {op} {access.name.lower()}: {rep.races} races, {rep.failed} failures")
    finally:
        w.backend.close()
    rep.failures += [f"DRAM: {c}" for c in w.backend.dram.corruptions]
    return rep


def _race(w: _World, rep: RaceReport, op: str, access: Access, start: str, offset: int,
          page: int) -> None:
    host, h, memory = w.host, w.harness, w.memory
    where = f"{op} {access.name.lower()} {start} +{offset}"
    # the page mapped for the access, its entry's A/D clear where the op is about them
    if page not in host.resident or not host.pmap.extract(page):
        host.fault(page, access)
    if not host.pmap.lookup(page) & (1 << int(access)):
        host.fault(page, access)
    if start == "warm":
        _check(w, rep, h.translate(page, access, w.backend.watchdog), where + " (warm-up)")
    else:
        w.backend.invept("global")
    frame = host.resident[page]
    pte_addr = host.pmap._pte_addr(page)
    t = h.submit(page | (offset * 8 % PAGE_SIZE), access)
    h.step(offset)
    in_flight = not t.done
    seq_before = w.backend.history.seq
    if op == "clear_reference":
        host.pages.clear_reference(frame)
    elif op == "clear_modify":
        if host.pages.clear_modify(frame):
            host.save(page, frame)
    elif op == "protect":
        host.pmap.protect(page, page + PAGE_SIZE, VM_PROT_READ)
    elif op == "remove":
        host.evict(frame)
    else:           # enter: the same page on a new frame
        host.remap(page, access)
    seq_op = w.backend.history.seq
    h.run_until(lambda: t.done, w.backend.watchdog, f"response for GPA {t.gpa:#x} ({where})")
    rep.races += 1
    rep.by_op[op] = rep.by_op.get(op, 0) + 1
    rep.overlapped += in_flight
    _check(w, rep, t, where)
    # A/D resurrection: bits the host cleared are back only by a walker CAS after the clear
    cleared = {"clear_reference": EPT_A, "clear_modify": EPT_D}.get(op)
    if cleared and pte_addr is not None:
        value = memory.peek(pte_addr)
        if value & cleared:
            by_walker = [s for s in w.stores if s[0] > seq_before and s[1] == pte_addr
                         and s[4] == "walker" and s[3] & cleared and not s[2] & cleared]
            host_clear = [s for s in w.stores if seq_before < s[0] <= seq_op and s[1] == pte_addr
                          and s[2] & cleared and not s[3] & cleared]
            if host_clear and not by_walker:
                rep.failures.append(f"{where}: {'A' if cleared == EPT_A else 'D'} set again at "
                                    f"{pte_addr:#x} without a walker CAS after the host cleared it")
    rep.cas_lost += t.retries
    # after the shootdown: the unit's answer must be the pmap's, whatever it cached
    again = h.translate(page, access, w.backend.watchdog)
    _check(w, rep, again, where + " (after)")
    mapped = host.pmap.extract(page)
    allowed = mapped is not None and host.pmap.lookup(page) & (1 << int(access))
    if allowed and again.outcome is not Outcome.OK:
        rep.failures.append(f"{where}: after the operation the pmap maps {mapped:#x} for "
                            f"{access.name.lower()}, the unit answered {again.outcome}")
    elif allowed and again.hpa & ~(PAGE_SIZE - 1) != mapped:
        rep.failures.append(f"{where}: stale translation after INVEPT: unit {again.hpa:#x}, "
                            f"pmap {mapped:#x}")
    elif not allowed and again.outcome is Outcome.OK:
        rep.failures.append(f"{where}: stale translation after INVEPT: unit {again.hpa:#x}, "
                            f"pmap {'no mapping' if mapped is None else 'no ' + access.name.lower()}")
    if h.inflight or h.pending:
        rep.failures.append(f"{where}: {len(h.inflight)} requests still in flight after the answers")
    del w.stores[:]


def _check(w: _World, rep: RaceReport, t, where: str) -> None:
    rep.translations += 1
    sb = w.backend.scoreboard
    before = sb.failed
    sb.check(t)
    if not t.done:
        rep.failures.append(f"{where}: request never answered")
    elif sb.failed > before:
        rep.failures.append(f"{where}: {sb.mismatches[-1] if sb.mismatches else 'scoreboard mismatch'}")


# -- the `races` command ---------------------------------------------------------------
ABOUT = dict(help="host pmap operations racing walks at every cycle offset",
                        description="clear_reference, clear_modify, protect, remove and enter-on-a-"
                                    "new-frame, run at every cycle offset of a cold and a warm "
                                    "translation of each access kind; checks: scoreboard, one answer "
                                    "per request, no A/D resurrection, no stale translation after "
                                    "INVEPT. With --nested: guest PTE/PDE changes and EPT leaves of "
                                    "the guest page-table page and data page, racing 2D walks on the "
                                    "nested unit (no stale translation after the INVVPID or INVEPT "
                                    "they need). The last line is 'N races, M failures'.",
             epilog=("examples:\n"
                     "  python -m sim races --backend verilator\n"
                     "  python -m sim races --max-offset 16 --no-ad\n"
                     "  python -m sim races --nested --max-offset 400 --step 20\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, default) or verilator")
    p.add_argument("--max-offset", type=positive, default=None, metavar="CYCLES",
                    help="offsets 0..CYCLES-1 from the request (default 72: past a cold walk and its CASes; "
                         f"with --nested {NESTED_MAX_OFFSET}: past a cold 2D walk and its guest A/D CASes)")
    p.add_argument("--step", type=positive, default=None, metavar="CYCLES",
                    help=f"every CYCLES-th offset (default 1; with --nested {NESTED_STEP})")
    p.add_argument("--nested", action="store_true",
                    help="the nested unit: guest and host pmap operations (guest PTE/PDE, the EPT leaves "
                         "of the guest page-table page and of the data page) racing 2D walks")
    p.add_argument("--no-ad", action="store_true", help="EPTP A/D flags disabled")
    p.add_argument("--out", default="build/reliability/races.json", metavar="FILE.json",
                    help="where to write the JSON report (default build/reliability/races.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_reliability_option(p)
    add_unit_options(p)


def main(args) -> int:
    max_offset = args.max_offset or (NESTED_MAX_OFFSET if args.nested else 72)
    step = args.step or (NESTED_STEP if args.nested and NESTED_STEP < max_offset else 1)
    if step >= max_offset and max_offset > 1:
        raise UsageError(f"--step {step} leaves only offset 0 of --max-offset {max_offset}: "
                         f"make it smaller than {max_offset}")
    opts = RaceOptions(backend=args.backend, offsets=range(0, max_offset, step), ad=not args.no_ad,
                       unit=unit_kwargs(args), nested=args.nested)
    if args.nested:
        from sim.verify.races_nested import NESTED_OPS
        opts.ops = NESTED_OPS
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    output_path("--out", args.out)
    progress = progress_printer(args.quiet)
    rep = run_races(opts, progress)
    from sim.verify.reliability import update_report
    data = {"races": rep.races, "translations": rep.translations, "by_op": rep.by_op,
            "overlapped_walks": rep.overlapped, "cas_retries": rep.cas_lost,
            "failures": rep.failures[:50],
            "options": {"backend": args.backend, "max_offset": max_offset, "step": step,
                        "ad": not args.no_ad, "nested": args.nested, "unit": opts.unit}}
    if args.nested:
        data["alternative_states"] = rep.alternatives
    write_json(Path(args.out), data, indent=1)
    if not args.no_reliability:
        update_report("races_nested" if args.nested else "races", data)
    for f in rep.failures[:20]:
        print(f"FAIL: {f}", file=sys.stderr)
    who = "the guest or the host" if args.nested else "the host"
    print(f"{rep.translations} translations; {rep.overlapped} races landed while the walk was in "
          f"flight; {rep.cas_lost} A/D CASes lost to {who} and retried")
    print(f"report written to {args.out}")
    print(f"{rep.races} races, {rep.failed} failures")
    return 1 if rep.failed else 0
