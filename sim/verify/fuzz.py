"""Differential fuzzing of the RTL against the golden model (``python -m sim fuzz``).

Each *case* is a hostile EPT table set, an EPTP (valid, or invalid on
purpose) and a stream of translations interleaved with host stores and
INVEPTs, run on the RTL (pysim or Verilator) with every response checked by
the scoreboard against the reference walk.  Cases run in *rounds* that share
one unit (its TLB and caches carry over between cases, as in a machine that
switches guests); with ``--faults`` each round also gets a hostile DRAM:
bus errors on chosen entries and at random, long stalls, latencies far above
normal.

Hostile tables (beyond :class:`sim.cosim.tables.TableBuilder`'s reserved bits, W
without R, execute-only and bad memory types): every reserved bit of every
level in a deterministic sweep first, 1G and 2M pages, a table entry
pointing at its own table or its parent's, tables aliased between paths and
levels, tables and pages at the top of MAXPHYADDR, and random EPTPs.

Every store the walker makes is checked as it happens (only A or D may be
set, only in an entry the host wrote) and, after each round, memory is
compared with a shadow copy of everything the host wrote.

On a mismatch the failing case is cut down (the failing translation, the
host ops before it, and only the memory words the reference walks read) and
written as a replay scenario, with the replay command that reproduces it.
"""

from __future__ import annotations

import argparse
import sys

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from model.formats import (
    EPT_A, EPT_D, EPT_LEAF, EptConfig, Eptp, EptpError, Level, PAGE_SIZE, Access,
    gpa_index, reserved_mask,
)
from model.physmem import PhysicalMemory
from model.walk import walk

from sim.backends.base import make_backend
from sim.cosim.dram import DramConfig
from sim.cosim.harness import HangError
from sim.files import write_json
from sim.cosim.tables import TableBuilder, TableSet
from sim.options import (output_dir, positive, add_unit_options, unit_kwargs, progress_printer,
                         add_reliability_option, fraction, UsageError)

__all__ = ["FuzzOptions", "FuzzReport", "run_fuzz", "sweep_cases"]


@dataclass
class FuzzOptions:
    walks: int = 1000
    seed: int = 1
    backend: str = "rtl"
    faults: bool = False
    cases_per_round: int = 12
    out: Path = Path("build/fuzz")
    unit: dict = field(default_factory=dict)
    watchdog: int = 200_000            # cycles a translation may take before it is a hang
    nested: bool = False               # guest tables over EPT on the nested unit (sim.verify.fuzz_nested)
    unsynced: float = 0.3              # nested: share of table stores left without their invalidation
    shrink: bool = True                # cut a failing case down and write a replay scenario
    shrink_seconds: float = 240.0      # nested: time to spend cutting one case down

    def validate(self) -> None:
        if self.walks < 1:
            raise ValueError(f"--walks must be at least 1, not {self.walks}")
        if self.backend not in ("rtl", "verilator"):
            raise ValueError(f"fuzz runs on the RTL: --backend rtl or verilator, not {self.backend!r}")
        if not 0 <= self.unsynced <= 1:
            raise ValueError(f"--unsynced must be in 0..1, not {self.unsynced}")
        if self.nested:
            from sim.backends.base import backend_class
            cls = backend_class(self.backend)
            if not cls.nested:
                from sim.backends.base import BackendUnavailable
                raise BackendUnavailable(f"the {self.backend} backend cannot run the nested unit yet: "
                                         f"use --backend rtl, or fuzz without --nested")


@dataclass
class FuzzReport:
    walks: int = 0
    cases: int = 0
    rounds: int = 0
    sweep_cases: int = 0
    invalid_eptps: int = 0
    host_writes: int = 0
    invepts: int = 0
    outcomes: dict = field(default_factory=dict)
    faults_injected: int = 0           # bus errors the DRAM answered
    stall_cycles: int = 0
    hangs: int = 0
    corruptions: int = 0
    mismatches: int = 0
    # the nested campaign (--nested)
    guests: int = 0                    # guest contexts loaded (one per case)
    paging_off: int = 0                # ... with CR0.PG = 0
    guest_writes: int = 0              # guest-entry stores
    unsynced_writes: int = 0           # table stores left without their invalidation
    invvpids: dict = field(default_factory=dict)
    cr3_loads: int = 0
    bursts: int = 0                    # translations submitted together (2-4 in flight)
    reports: list = field(default_factory=list)       # first lines of each mismatch
    reproducers: list = field(default_factory=list)


# -- hostile tables ------------------------------------------------------------------------

class HostileBuilder(TableBuilder):
    """TableBuilder plus self, parent and aliased table pointers and frames
    at the top of physical memory."""

    def __init__(self, memory, base, rng, config, top):
        super().__init__(memory, base, rng, config)
        self.top = top                    # next free frame going down from the top
        self.frames: list[int] = []

    def frame(self) -> int:
        if self.rng.random() < 0.15:      # a table at the top of MAXPHYADDR
            self.top -= PAGE_SIZE
            pa = self.top
        else:
            pa = super().frame()
        self.frames.append(pa)
        return pa

    def build(self, n_paths: int = 4, ad: bool | None = None) -> TableSet:
        ts = super().build(n_paths, ad)
        r = self.rng
        # rewire a few table pointers: to their own table, to the parent, to another table
        tables = [(addr, v) for addr, v in ts.words.items() if v & 0b111 and not v & EPT_LEAF]
        for addr, value in r.sample(tables, k=min(len(tables), r.randrange(0, 3))):
            own = addr & ~(PAGE_SIZE - 1)
            target = r.choice([own, ts.eptp.pml4_pa, r.choice(self.frames)])
            self.write(ts, addr, (value & ~self._frame_bits()) | target)
        # a page at the very top of physical memory
        if r.random() < 0.3:
            leaves = [(a, v) for a, v in ts.words.items() if v & 0b111 and v & EPT_LEAF]
            if leaves:
                addr, value = r.choice(leaves)
                size = 1 << 30 if value & EPT_LEAF and self._level_of(ts, addr) == Level.PDPTE else \
                    1 << 21 if value & EPT_LEAF and self._level_of(ts, addr) == Level.PDE else PAGE_SIZE
                top_page = (1 << self.config.maxphyaddr) - size
                self.write(ts, addr, (value & ~self._frame_bits()) | top_page)
        return ts

    def _frame_bits(self) -> int:
        return ((1 << self.config.maxphyaddr) - 1) & ~(PAGE_SIZE - 1)

    def _level_of(self, ts: TableSet, addr: int) -> Level | None:
        for gpa in ts.gpas:
            table = ts.eptp.pml4_pa
            for level in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
                a = table + gpa_index(gpa, level) * 8
                if a == addr:
                    return level
                e = self.memory.peek(a)
                if not e & 0b111 or (level != Level.PML4E and e & EPT_LEAF) or level == Level.PTE:
                    break
                table = e & self._frame_bits()
        return None


def sweep_cases(config: EptConfig) -> list[tuple[Level, bool, int]]:
    """Every (level, leaf, reserved bit) an entry can break."""
    out = []
    for level in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
        for leaf in ((False,) if level == Level.PML4E else (True,) if level == Level.PTE else (False, True)):
            mask = reserved_mask(level, leaf, config.maxphyaddr)
            out += [(level, leaf, bit) for bit in range(64) if mask >> bit & 1]
    return out


def _sweep_table(builder: TableBuilder, level: Level, leaf: bool, bit: int) -> TableSet:
    """One path down to ``level`` whose entry there is otherwise valid but has ``bit`` set."""
    r = builder.rng
    pml4 = builder.frame()
    ts = TableSet(Eptp(pml4_pa=pml4, ad_enabled=r.random() < 0.5), [])
    gpa = r.getrandbits(48) & ~0xFFF
    ts.gpas.append(gpa | r.getrandbits(12))
    table = pml4
    for lv in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
        addr = table + gpa_index(gpa, lv) * 8
        if lv == level and leaf:
            size = lv.page_size
            entry = (r.randrange(0, 1 << 40, size) | 0b111 | (6 << 3)
                     | (EPT_LEAF if lv != Level.PTE else 0))
            builder.write(ts, addr, entry | (1 << bit))
            break
        nxt = builder.frame()
        entry = nxt | 0b111 | ((1 << bit) if lv == level else 0)
        builder.write(ts, addr, entry)
        if lv == level:
            # the level below is valid: a walk that did not stop here would succeed
            below = _below(lv)
            builder.write(ts, nxt + gpa_index(gpa, below) * 8,
                          (r.randrange(0, 1 << 40, below.page_size) | 0b111 | (6 << 3)
                           | (EPT_LEAF if below != Level.PTE else 0)))
            break
        table = nxt
    return ts


def _below(level: Level) -> Level:
    return {Level.PML4E: Level.PDPTE, Level.PDPTE: Level.PDE, Level.PDE: Level.PTE}[level]


def _invalid_eptp(rng: random.Random, pml4: int, config: EptConfig) -> int:
    """An EPTP breaking one rule (memory type, walk length, bits 11:8, high bits)."""
    good = Eptp(pml4_pa=pml4, ad_enabled=rng.random() < 0.5).encode()
    how = rng.choice(["memtype", "walk", "low", "high", "random"])
    if how == "memtype":
        return (good & ~0x7) | rng.choice([1, 2, 3, 4, 5, 7])
    if how == "walk":
        return (good & ~(0x7 << 3)) | (rng.choice([0, 1, 2, 4, 5, 6, 7]) << 3)
    if how == "low":
        return good | (1 << rng.randrange(8, 12))
    if how == "high":
        return good | (1 << rng.randrange(config.maxphyaddr, 64))
    return rng.getrandbits(64)


# -- running -------------------------------------------------------------------------------

@dataclass
class _Case:
    index: int
    memory_before: dict           # every nonzero word when the case began
    eptp: int
    ops: list = field(default_factory=list)     # replay ops, in order


class _Fuzzer:
    def __init__(self, opts: FuzzOptions, progress=None):
        self.opts = opts
        self.progress = progress or (lambda line: None)
        self.config = EptConfig()
        self.report = FuzzReport()
        self.sweep = sweep_cases(self.config)
        self.case_no = 0

    def _dram(self, rng: random.Random, round_no: int) -> DramConfig:
        if not self.opts.faults or round_no % 4 == 0:
            return DramConfig(seed=rng.getrandbits(16))
        kind = round_no % 4
        if kind == 1:       # bus errors, at random and on entries chosen later
            return DramConfig(error_probability=rng.choice([0.01, 0.05, 0.2]), seed=rng.getrandbits(16))
        if kind == 2:       # the DRAM stalls for long stretches
            return DramConfig(stall_probability=rng.choice([0.5, 0.8, 0.95]), seed=rng.getrandbits(16))
        return DramConfig(read_latency=rng.choice([200, 1000, 4000]),     # responses at the limit
                          cas_latency=rng.choice([300, 2000, 6000]), max_outstanding=rng.choice([1, 2, 64]),
                          seed=rng.getrandbits(16))

    def run(self) -> FuzzReport:
        o, rep = self.opts, self.report
        round_no = 0
        while rep.walks < o.walks:
            self._round(round_no)
            round_no += 1
            self.progress(f"  round {round_no}: {rep.walks}/{o.walks} walks, {rep.cases} cases, "
                          f"{rep.mismatches} mismatches")
        return rep

    def _round(self, round_no: int) -> None:
        o, rep = self.opts, self.report
        rng = random.Random(o.seed * 1_000_003 + round_no)
        memory = PhysicalMemory(self.config.maxphyaddr)
        dram = self._dram(rng, round_no)
        backend = make_backend(o.backend, memory, self.config, dram=dram, seed=rng.getrandbits(16),
                               watchdog=o.watchdog, unit=dict(o.unit))
        shadow: dict[int, int] = {}
        host_words: set[int] = set()
        bad_stores: list[str] = []

        def on_store(addr, old, new, source):
            if source == "walker":
                if addr not in host_words:
                    bad_stores.append(f"walker stored {new:#x} at {addr:#x}, an entry no table holds")
                elif (old ^ new) & ~(EPT_A | EPT_D) or old & ~new:
                    bad_stores.append(f"walker changed {old:#x} -> {new:#x} at {addr:#x} (only A/D may be set)")
            else:
                host_words.add(addr)
                shadow[addr] = new
        memory.observe(on_store)
        rep.rounds += 1
        base, top = 0x100_0000, 1 << self.config.maxphyaddr
        try:
            for _ in range(o.cases_per_round):
                if rep.walks >= o.walks:
                    break
                base, top = self._case(backend, memory, rng, base, top, dram, bad_stores)
        except HangError:
            pass            # reported; the unit is wedged: the next round starts afresh
        finally:
            backend.close()
            d = backend.dram
            rep.faults_injected += d.errors
            rep.stall_cycles += d.stall_cycles
        # the shadow copy: every word is what the host wrote, plus A/D the walker set
        for addr, value in memory.nonzero_words():
            want = shadow.get(addr)
            if want is None or (value ^ want) & ~(EPT_A | EPT_D) or want & ~value:
                bad_stores.append(f"memory at {addr:#x} is {value:#x}, the host wrote "
                                  f"{'nothing' if want is None else hex(want)}")
        if bad_stores:
            rep.corruptions += len(bad_stores)
            rep.mismatches += len(bad_stores)
            rep.reports += bad_stores[:5]

    def _case(self, backend, memory, rng, base, top, dram, bad_stores):
        o, rep = self.opts, self.report
        k = self.case_no
        self.case_no += 1
        crng = random.Random(rng.getrandbits(64))
        builder = HostileBuilder(memory, base, crng, self.config, top)
        if k < len(self.sweep):
            ts = _sweep_table(builder, *self.sweep[k])
            rep.sweep_cases += 1
        else:
            ts = builder.build(n_paths=crng.randrange(2, 7))
        before = dict(memory.nonzero_words())
        entries = sorted(ts.words)
        if o.faults and dram.error_probability and entries:
            # bus errors on chosen entries: any level of the walk
            backend.dram.config.error_addrs = frozenset(crng.sample(entries, k=min(2, len(entries))))
        valid = k < len(self.sweep) or crng.random() < 0.85
        value = ts.eptp.encode() if valid else _invalid_eptp(crng, ts.eptp.pml4_pa, self.config)
        case = _Case(k, before, value)
        rep.cases += 1
        try:
            backend.load_eptp(value)
        except EptpError:
            rep.invalid_eptps += 1
            # refused by both: nothing may be walked, every request answered "refused"
            for _ in range(2):
                if rep.walks >= o.walks:        # exactly the walks asked for, never more
                    break
                t = backend.translate_ticket(crng.choice(ts.gpas), crng.choice(list(Access)))
                rep.walks += 1
                rep.outcomes["refused"] = rep.outcomes.get("refused", 0) + 1
                if not t.refused:
                    self._mismatch(case, f"EPTP {value:#x} refused, but GPA {t.gpa:#x} was "
                                         f"answered {t.outcome}", None)
            return builder.next, builder.top
        except RuntimeError as e:
            self._mismatch(case, f"EPTP {value:#x}: {e}", None)
            return builder.next, builder.top
        n = 1 + len(Access) if k < len(self.sweep) else crng.randrange(4, 24)
        for _ in range(n):
            if rep.walks >= o.walks:
                break
            r = crng.random()
            if r < 0.12 and entries:
                addr = crng.choice(entries)
                new = memory.peek(addr) ^ crng.choice([EPT_A, EPT_D, 0b001, 0b010, 0b100, EPT_LEAF,
                                                       1 << crng.randrange(12, 52)])
                backend.write(addr, new)
                case.ops.append({"op": "write", "addr": hex(addr), "value": hex(new)})
                rep.host_writes += 1
                if crng.random() < 0.7:
                    kind = crng.choice(["single", "single", "global"])
                    backend.invept(kind)
                    case.ops.append({"op": "invept", "kind": kind})
                    rep.invepts += 1
                continue
            gpa = crng.choice(ts.gpas) ^ (crng.getrandbits(12) if crng.random() < 0.5 else 0)
            access = crng.choice(list(Access))
            if valid and crng.random() < 0.5:
                # most random accesses fault: half the time ask for what the tables allow
                perms = walk(memory, ts.eptp if k >= len(self.sweep) else Eptp.decode(value),
                             gpa, Access.READ, self.config).perms
                allowed = [a for a in Access if perms & a.perm_bit]
                access = crng.choice(allowed) if allowed else access
            case.ops.append({"op": "translate", "gpa": hex(gpa), "access": access.name.lower()})
            failed = backend.scoreboard.failed
            corrupt = len(backend.dram.corruptions)
            stores = len(bad_stores)
            try:
                t = backend.translate_ticket(gpa, access)
            except HangError as e:
                rep.hangs += 1
                self._mismatch(case, f"hang: {e}", dram)
                raise
            rep.walks += 1
            name = "refused" if t.refused else t.outcome.value
            rep.outcomes[name] = rep.outcomes.get(name, 0) + 1
            if backend.scoreboard.failed > failed or len(backend.dram.corruptions) > corrupt \
                    or len(bad_stores) > stores:
                msgs = (backend.scoreboard.mismatches[-1:] if backend.scoreboard.failed > failed else []) \
                    + backend.dram.corruptions[corrupt:] + bad_stores[stores:]
                self._mismatch(case, msgs[0] if msgs else "mismatch", dram)
                del bad_stores[stores:]          # counted here, not again at the round's end
        return builder.next, builder.top

    # -- reproducers ----------------------------------------------------------------------
    def _mismatch(self, case: _Case, message: str, dram: DramConfig | None) -> None:
        rep = self.report
        rep.mismatches += 1
        if len(rep.reports) < 20:
            rep.reports.append(f"case {case.index}: {message}")
        if dram is None or len(rep.reproducers) >= 5:
            return
        repro = self._write_reproducer(case, dram)
        if repro is not None:
            rep.reproducers.append(repro)

    def _write_reproducer(self, case: _Case, dram: DramConfig) -> str | None:
        try:
            eptp = Eptp.decode(case.eptp, self.config)
        except EptpError:
            return None
        ops = _cut(case.ops)
        memory = PhysicalMemory(self.config.maxphyaddr)
        for addr, value in case.memory_before.items():
            memory.write(addr, value, source="init")
        needed: set[int] = set()
        for op in ops:                   # the words the reference walks read, op by op
            if op["op"] == "write":
                memory.write(int(op["addr"], 16), int(op["value"], 16))
                needed.add(int(op["addr"], 16))
            elif op["op"] == "translate":
                t = walk(memory, eptp, int(op["gpa"], 16), Access[op["access"].upper()], self.config)
                needed.update(s.addr for s in t.steps)
        scenario = self._scenario(case, ops, needed)
        kw = dict(dram=dram, seed=dram.seed, unit=dict(self.opts.unit))
        reproduces = _replay_fails(scenario, self.opts.backend, kw)
        if not reproduces:
            # the cut lost it (earlier translations' cache state?): the whole case
            scenario = self._scenario(case, case.ops, set(case.memory_before))
            reproduces = _replay_fails(scenario, self.opts.backend, kw)
        path = Path(self.opts.out) / f"repro-seed{self.opts.seed}-case{case.index}.json"
        write_json(path, scenario, indent=1)       # never a half-written reproducer
        flags = _dram_flags(dram, self.opts)
        return {"scenario": str(path), "reproduces": reproduces, "ops": len(scenario["ops"]),
                "words": len(scenario["memory"]),
                "command": f"python -m sim replay {path} --backend {self.opts.backend}{flags}"}

    def _scenario(self, case: _Case, ops: list, needed: set) -> dict:
        words = [{"addr": hex(a), "value": hex(v)} for a, v in sorted(case.memory_before.items())
                 if a in needed]
        return {"eptp": hex(case.eptp),
                "config": {"maxphyaddr": self.config.maxphyaddr, "execute_only": self.config.execute_only},
                "memory": words, "ops": ops}


def _replay_fails(scenario: dict, backend: str, kw: dict) -> bool:
    """Does replaying ``scenario`` alone on a fresh unit give a mismatch?"""
    from sim.verify.replay import replay
    from sim.cosim.scenario import parse_scenario
    with open(os.devnull, "w") as sink:
        try:
            result = replay(parse_scenario(scenario), backend, out=sink, **kw)
        except HangError:
            return True
    return bool(result.mismatches)


def _cut(ops: list[dict]) -> list[dict]:
    """Up to the last translation (the failing one): the host ops before it
    and that translation (earlier translations only set A/D, which the
    reference walk of the failing one reads from memory anyway)."""
    last = max(i for i, op in enumerate(ops) if op["op"] == "translate")
    return [op for op in ops[:last] if op["op"] != "translate"] + [ops[last]]


def _dram_flags(d: DramConfig, o: FuzzOptions) -> str:
    """The replay options that rebuild this DRAM model and unit (only what differs from the defaults)."""
    flags = []
    base = DramConfig()
    for name, flag in (("read_latency", "--dram-latency"), ("cas_latency", "--dram-cas-latency"),
                       ("row_miss_penalty", "--dram-row-miss-penalty"),
                       ("max_outstanding", "--dram-max-outstanding"), ("stall_probability", "--dram-stall"),
                       ("error_probability", "--bus-error-rate"), ("seed", "--dram-seed")):
        if getattr(d, name) != getattr(base, name):
            flags.append(f"{flag} {getattr(d, name)}")
    for name, value in o.unit.items():
        option = name.replace("_", "-")
        flags.append(f"--{option} {value}" if type(value) is int else f"--{'' if value else 'no-'}{option}")
    return "".join(" " + f for f in flags)


def run_fuzz(opts: FuzzOptions, progress=None) -> FuzzReport:
    opts.validate()
    fuzzer = _Fuzzer(opts, progress)
    if opts.nested:
        from sim.verify.fuzz_nested import run_nested_fuzz
        return run_nested_fuzz(opts, fuzzer.report, fuzzer._dram, _dram_flags, progress)
    return fuzzer.run()


# -- the `fuzz` command ---------------------------------------------------------------
ABOUT = dict(help="differential fuzzing: hostile tables on the RTL vs the golden model",
                        description="Random hostile EPT table sets (every reserved bit, 1G/2M pages, "
                                    "self/parent/aliased tables, the top of MAXPHYADDR, invalid EPTPs) "
                                    "and access streams with host stores and INVEPTs, run on the RTL "
                                    "and checked against the golden model. The last line is "
                                    "'N walks, M mismatches'; a mismatch exits 1 and leaves a replay "
                                    "scenario that reproduces it. --nested fuzzes the nested unit "
                                    "instead: random guest tables over random EPT tables, MOV CR3, "
                                    "INVVPID, INVEPT and table stores, with or without their "
                                    "invalidations, checked by the nested scoreboard.",
             epilog=("examples:\n"
                     "  python -m sim fuzz --backend verilator --faults --walks 20000\n"
                     "  python -m sim fuzz --walks 200 --seed 3 --walkers 1\n"
                     "  python -m sim fuzz --nested --walks 300 --unsynced 0.5\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--walks", type=positive, default=1000, metavar="N",
                    help="translations to run (default 1000)")
    p.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    p.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, default) or verilator (same results, much faster)")
    p.add_argument("--faults", action="store_true",
                    help="hostile DRAM too: bus errors on entries and at random, long stalls, "
                         "latencies in the thousands of cycles")
    p.add_argument("--cases-per-round", type=positive, default=12, metavar="K",
                    help="table sets per unit instance (default 12)")
    p.add_argument("--out", default="build/fuzz", metavar="DIR",
                    help="where reproducers and report.json go (default build/fuzz)")
    p.add_argument("--nested", action="store_true",
                    help="the nested unit: random guest page tables (4K/2M/1G, every flag, reserved bits, "
                         "CR0.PG/WP, EFER.NXE) over random EPT tables, with MOV CR3, INVVPID, INVEPT and "
                         "guest and EPT table stores (sim/verify/fuzz_nested.py)")
    p.add_argument("--unsynced", type=fraction, default=None, metavar="P",
                    help="with --nested: the share of table stores left without the invalidation they "
                         "need, so old and new are both legal until the next one (default 0.3)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_reliability_option(p)
    add_unit_options(p)


def main(args) -> int:
    from dataclasses import asdict
    if args.unsynced is not None and not args.nested:
        raise UsageError("--unsynced is for --nested (the EPT fuzzer's INVEPTs follow its stores at random)")
    opts = FuzzOptions(walks=args.walks, seed=args.seed, backend=args.backend, faults=args.faults,
                       cases_per_round=args.cases_per_round, out=Path(args.out),
                       unit=unit_kwargs(args), nested=args.nested,
                       unsynced=0.3 if args.unsynced is None else args.unsynced)
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    report_path = Path(args.out) / "report.json"
    output_dir("--out", args.out)
    progress = progress_printer(args.quiet)
    rep = run_fuzz(opts, progress)
    data = asdict(rep) | {"options": {"walks": args.walks, "seed": args.seed, "backend": args.backend,
                                      "faults": args.faults, "unit": opts.unit}}
    if args.nested:
        data["options"].update(nested=True, unsynced=opts.unsynced)
    else:
        for k in ("guests", "paging_off", "guest_writes", "unsynced_writes", "invvpids", "cr3_loads", "bursts"):
            del data[k]
    write_json(report_path, data, indent=1)
    if not args.no_reliability:
        from sim.verify.reliability import update_report
        update_report("fuzz_nested" if args.nested else "fuzz", {k: v for k, v in data.items() if k != "reports"})
    if args.nested:
        inv = ", ".join(f"{k} {v}" for k, v in sorted(rep.invvpids.items())) or "none"
        print(f"{rep.cases} guests over EPT ({rep.sweep_cases} guest reserved-bit sweep, {rep.paging_off} "
              f"with paging off) in {rep.rounds} rounds; {rep.guest_writes} guest-entry and {rep.host_writes} "
              f"EPT-entry stores ({rep.unsynced_writes} left unsynced), {rep.invepts} INVEPTs, INVVPIDs "
              f"({inv}), {rep.cr3_loads} MOV CR3, {rep.bursts} bursts of 2-4 requests")
    else:
        print(f"{rep.cases} table sets ({rep.sweep_cases} reserved-bit sweep, {rep.invalid_eptps} invalid "
              f"EPTPs) in {rep.rounds} rounds; {rep.host_writes} host stores, {rep.invepts} INVEPTs")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.outcomes.items())))
    if args.faults:
        print(f"faults: {rep.faults_injected} bus errors injected, {rep.stall_cycles} DRAM stall cycles, "
              f"{rep.hangs} hangs, {rep.corruptions} table corruptions")
    for line in rep.reports:
        print(f"MISMATCH: {line}", file=sys.stderr)
    for r in rep.reproducers:
        print(f"reproducer ({r['ops']} ops, {r['words']} words, "
              f"{'reproduces alone' if r['reproduces'] else 'does NOT reproduce alone'}): {r['command']}")
    print(f"report written to {report_path}")
    print(f"{rep.walks} walks, {rep.mismatches} mismatches")
    return 1 if rep.mismatches else 0
