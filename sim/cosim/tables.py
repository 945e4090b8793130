"""Random EPT table sets for cosimulation tests and fuzzing.

A table set is a PML4 plus, for each of a few GPAs, a path of entries whose
every level is drawn from: a table pointer, a leaf (2M/1G where the level
allows), not present, or a hostile entry (reserved bits, W without R,
execute-only, bad memory type), with random permissions, memory types,
ignored bits and preset A/D bits.  Paths of different GPAs share tables when
their indices meet, so the generator also produces shared and sibling
entries.  Everything is written into a :class:`PhysicalMemory` from a bump
allocator, so table sets never overlap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from model.formats import (
    EPT_A, EPT_D, EPT_LEAF, EPT_RWX, EptConfig, Eptp, Level, MemType, PAGE_SIZE,
    gpa_index, make_leaf_entry, make_table_entry, reserved_mask,
)
from model.physmem import PhysicalMemory

__all__ = ["TableSet", "TableBuilder", "HandTables", "random_table_set"]

IGNORED_BITS = (1 << 11) | (0x7FF << 52) | (1 << 63) | (1 << 10)


@dataclass
class TableSet:
    eptp: Eptp
    gpas: list[int]
    words: dict[int, int] = field(default_factory=dict)   # what was written


class TableBuilder:
    """Lays out tables in ``memory`` from ``base`` upwards."""

    def __init__(self, memory: PhysicalMemory, base: int, rng: random.Random,
                 config: EptConfig = EptConfig()):
        self.memory = memory
        self.next = base
        self.rng = rng
        self.config = config

    def frame(self) -> int:
        pa = self.next
        self.next += PAGE_SIZE
        return pa

    def write(self, ts: TableSet, addr: int, value: int) -> None:
        self.memory.write(addr, value, source="init")
        ts.words[addr] = value

    def entry(self, level: Level, kind: str, target: int) -> int:
        """One entry of ``kind`` at ``level``; ``target`` is the table/page address."""
        r = self.rng
        perms = r.choice([0b001, 0b011, 0b101, 0b111, 0b111, 0b111, 0b100])
        extra = r.getrandbits(64) & IGNORED_BITS if r.random() < 0.3 else 0
        if r.random() < 0.3:
            extra |= EPT_A | (EPT_D if r.random() < 0.5 else 0)
        if kind == "table":
            return target | perms | (extra & ~EPT_D)
        if kind == "leaf":
            mt = r.choice([int(t) for t in MemType])
            e = target | perms | (mt << 3) | extra | (r.getrandbits(1) << 6)
            return e | (EPT_LEAF if level != Level.PTE else (r.getrandbits(1) << 7))
        if kind == "absent":
            return r.choice([0, r.getrandbits(64) & ~EPT_RWX])
        # hostile: one architectural rule broken
        how = r.choice(["reserved", "w_no_r", "x_only", "memtype"])
        leaf = level == Level.PTE or (level != Level.PML4E and r.random() < 0.5)
        base = target | (EPT_LEAF if leaf and level != Level.PTE else 0)
        if how == "w_no_r":
            return base | r.choice([0b010, 0b110])
        if how == "x_only":
            return base | 0b100 | ((6 << 3) if leaf else 0)
        if how == "memtype" and leaf:
            return base | 0b111 | (r.choice([2, 3, 7]) << 3)
        mask = reserved_mask(level, leaf, self.config.maxphyaddr)
        bits = [i for i in range(64) if mask >> i & 1]
        return base | 0b111 | ((6 << 3) if leaf else 0) | (1 << r.choice(bits))

    def build(self, n_paths: int = 4, ad: bool | None = None) -> TableSet:
        r = self.rng
        pml4 = self.frame()
        ad = r.random() < 0.7 if ad is None else ad
        ts = TableSet(Eptp(pml4_pa=pml4, ad_enabled=ad, memtype=r.choice([0, 6])), [])
        tables: dict[tuple[int, int], int] = {}    # (level, gpa prefix) -> table frame
        maxpa = 1 << self.config.maxphyaddr
        for _ in range(n_paths):
            gpa = r.getrandbits(48)
            if ts.gpas and r.random() < 0.4:       # a sibling of an earlier GPA
                gpa = (r.choice(ts.gpas) & ~((1 << r.choice([12, 21, 30])) - 1)) | r.getrandbits(12)
            ts.gpas.append(gpa)
            table = pml4
            for level in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
                addr = table + gpa_index(gpa, level) * 8
                existing = self.memory.peek(addr)
                key = (int(level) - 1, gpa >> level.shift)
                if existing and key in tables:
                    table = tables[key]
                    continue
                if existing:
                    break                           # an earlier path ended here
                choices = ["table"] * 6 + ["absent", "hostile"]
                if level.can_be_leaf:
                    choices += ["leaf"] * (6 if level == Level.PTE else 2)
                if level == Level.PTE:
                    choices = [c for c in choices if c != "table"]
                kind = r.choice(choices)
                if kind == "table":
                    nxt = self.frame()
                    tables[key] = nxt
                    self.write(ts, addr, self.entry(level, "table", nxt))
                    table = nxt
                    continue
                size = level.page_size
                target = r.randrange(0, min(maxpa, 1 << 40), size) if kind != "absent" else 0
                self.write(ts, addr, self.entry(level, kind, target))
                break
        # a few GPAs nobody mapped, and neighbours of mapped ones
        for _ in range(2):
            ts.gpas.append(r.getrandbits(48))
        return ts


def random_table_set(memory: PhysicalMemory, base: int, seed: int, n_paths: int = 4,
                     config: EptConfig = EptConfig(), ad: bool | None = None) -> tuple[TableSet, int]:
    """Build one table set at ``base``; returns it and the next free address."""
    b = TableBuilder(memory, base, random.Random(seed), config)
    ts = b.build(n_paths, ad)
    return ts, b.next


class HandTables:
    """EPT tables under one PML4, built by hand: ``map`` adds a leaf at any level.

    ``frame()`` hands out a fresh 4K table frame; intermediate tables are made
    on first use and shared by every GPA under them.
    """

    def __init__(self, memory: PhysicalMemory, frame, ad: bool = True):
        self.memory = memory
        self.frame = frame
        self.pml4 = frame()
        self.eptp = Eptp(pml4_pa=self.pml4, ad_enabled=ad)
        self.tables: dict[tuple[Level, int], int] = {}   # (level, GPA bits above it) -> frame

    @staticmethod
    def _key(gpa: int, level: Level) -> tuple[Level, int]:
        return level, gpa >> (12 + 9 * (level.value - 1))

    def entry_addr(self, gpa: int, level: Level) -> int:
        table = self.pml4
        for lv in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
            if lv == level:
                return table + gpa_index(gpa, lv) * 8
            table = self.tables[self._key(gpa, lv)]
        raise AssertionError(level)

    def map(self, gpa: int, hpa: int, level: Level = Level.PTE, perms: int = 0b111,
            table_perms: int = 0b111, **leaf_kw) -> int:
        """Map ``gpa`` to ``hpa`` with a leaf at ``level``; returns the leaf's address."""
        table = self.pml4
        for lv in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
            addr = table + gpa_index(gpa, lv) * 8
            if lv == level:
                self.memory.write(addr, make_leaf_entry(hpa, lv, perms, **leaf_kw), source="init")
                return addr
            key = self._key(gpa, lv)
            if key not in self.tables:
                self.tables[key] = self.frame()
                self.memory.write(addr, make_table_entry(self.tables[key], table_perms), source="init")
            table = self.tables[key]
        raise AssertionError(level)
