"""Tests of the reference EPT walk (model/walk.py) against shared/docs/ept-reference.md.

Page tables are built by hand in a PhysicalMemory: a fixed set of four tables
(PML4, PDPT, PD, PT) and one path through them for a GPA whose four indices
are all different, so a wrong index or a wrong table base lands on a zero
(not-present) word and shows up as a violation.
"""

from __future__ import annotations

import itertools

import pytest

from model.formats import (
    EPT_A, EPT_D, EPT_IGNORE_PAT, EPT_LEAF, EPT_R, EPT_RWX, EPT_W, EPT_X,
    Access, EptConfig, Eptp, Level, MemType, Outcome, gpa_index,
    make_leaf_entry, make_table_entry,
)
from model.physmem import PhysicalMemory
from model.walk import WalkLivelock, ad_update_plan, translate, walk

# --------------------------------------------------------------------------
# Fixtures of the page-table layout
# --------------------------------------------------------------------------

LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)
T_PML4, T_PDPT, T_PD, T_PT = 0x0010_0000, 0x0020_3000, 0x0030_5000, 0x0040_7000
TABLE_OF = {Level.PML4E: T_PML4, Level.PDPTE: T_PDPT, Level.PDE: T_PD, Level.PTE: T_PT}
NEXT_TABLE = {Level.PML4E: T_PDPT, Level.PDPTE: T_PD, Level.PDE: T_PT}

# Indices PML4 0x1A3, PDPT 0x0F5, PD 0x15C, PT 0x07E, offset 0xABC.
GPA = (0x1A3 << 39) | (0x0F5 << 30) | (0x15C << 21) | (0x07E << 12) | 0xABC

SIZES = ("4K", "2M", "1G")
LEAF_LEVEL = {"4K": Level.PTE, "2M": Level.PDE, "1G": Level.PDPTE}
PAGE = {"4K": 1 << 12, "2M": 1 << 21, "1G": 1 << 30}
FRAME = {"4K": 0x9_3456_7000, "2M": 0x9_3440_0000, "1G": 0x7_C000_0000}   # all < 2^36
ACCESSES = (Access.READ, Access.WRITE, Access.FETCH)
ACCESS_BIT = {Access.READ: 1, Access.WRITE: 2, Access.FETCH: 4}
PERM_BIT = {Access.READ: EPT_R, Access.WRITE: EPT_W, Access.FETCH: EPT_X}
MASK64 = (1 << 64) - 1


def levels_of(size: str) -> tuple[Level, ...]:
    """The levels a walk to a leaf of ``size`` reads, top first."""
    return LEVELS[: LEVELS.index(LEAF_LEVEL[size]) + 1]


def path_cases():
    """(size, level) for every entry of every path."""
    return [(s, lv) for s in SIZES for lv in levels_of(s)]


def path_ids(case):
    size, lv = case
    return f"{size}-{lv.name}"


def entry_addr(level: Level, gpa: int = GPA) -> int:
    return TABLE_OF[level] + gpa_index(gpa, level) * 8


def path(size: str = "4K", perms: dict | None = None, memtype: int = MemType.WB) -> dict:
    """Entries of a well-formed path to a ``size`` leaf: {level: entry}."""
    perms = perms or {}
    out = {}
    leaf = LEAF_LEVEL[size]
    for lv in LEVELS:
        p = perms.get(lv, EPT_RWX)
        if lv == leaf:
            out[lv] = make_leaf_entry(FRAME[size], lv, perms=EPT_RWX, memtype=memtype)
            out[lv] = (out[lv] & ~EPT_RWX) | p
            break
        out[lv] = make_table_entry(NEXT_TABLE[lv]) & ~EPT_RWX | p
    return out


def build(entries: dict, gpa: int = GPA, maxphyaddr: int = 46,
          mem: PhysicalMemory | None = None) -> PhysicalMemory:
    """Write ``entries`` ({level: value}) at their slots for ``gpa``."""
    mem = mem if mem is not None else PhysicalMemory(maxphyaddr)
    for lv, e in entries.items():
        mem.write(entry_addr(lv, gpa), e)
    return mem


def run(entries: dict, access: Access = Access.READ, config: EptConfig = EptConfig(),
        gpa: int = GPA, ad: bool = False):
    mem = build(entries, gpa, config.maxphyaddr)
    t = translate(mem, Eptp(T_PML4, ad_enabled=ad), gpa, access, config)
    return t, mem


def snapshot(mem: PhysicalMemory) -> dict:
    return dict(mem.nonzero_words())


def expected_hpa(size: str, frame: int | None = None, gpa: int = GPA) -> int:
    frame = FRAME[size] if frame is None else frame
    return frame | (gpa & (PAGE[size] - 1))


def assert_ok(t, size, memtype=MemType.WB, frame=None, gpa=GPA):
    assert t.outcome is Outcome.OK, t.reason
    assert t.hpa == expected_hpa(size, frame, gpa)
    assert t.page_size == PAGE[size]
    assert t.memtype == memtype
    assert t.qual is None
    assert [s.level for s in t.steps] == list(levels_of(size))


def assert_stopped_at(t, level):
    assert t.steps[-1].level == level
    assert len(t.steps) == LEVELS.index(level) + 1
    assert t.hpa is None and t.page_size is None and t.memtype is None


# --------------------------------------------------------------------------
# Successful walks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_leaf_translation(size, access):
    t, _ = run(path(size), access)
    assert_ok(t, size)
    assert t.level == LEAF_LEVEL[size]
    assert t.perms == EPT_RWX
    assert t.retries == 0 and t.ad_writes == ()


@pytest.mark.parametrize("size", SIZES)
def test_hpa_is_frame_or_offset_with_distinct_bits(size):
    # The offset part of the GPA must come from the GPA, the rest from the leaf.
    t, _ = run(path(size))
    mask = PAGE[size] - 1
    assert t.hpa & mask == GPA & mask
    assert t.hpa & ~mask == FRAME[size]
    assert t.hpa != GPA


@pytest.mark.parametrize("size", SIZES)
def test_steps_addresses_are_table_base_plus_index_times_8(size):
    entries = path(size)
    t, _ = run(entries)
    assert len(t.steps) == len(levels_of(size))
    for step, lv in zip(t.steps, levels_of(size)):
        assert step.level == lv
        assert step.addr == TABLE_OF[lv] + gpa_index(GPA, lv) * 8
        assert step.entry == entries[lv]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("index", [0, 1, 0x100, 511])
def test_index_extraction_each_level(size, index):
    # The same index at every level, and an offset with every bit set.
    gpa = (index << 39) | (index << 30) | (index << 21) | (index << 12) | 0xFF8
    entries = path(size)
    t, mem = run(entries, gpa=gpa)
    assert_ok(t, size, gpa=gpa)
    for step, lv in zip(t.steps, levels_of(size)):
        assert step.addr == TABLE_OF[lv] + index * 8


@pytest.mark.parametrize("level", [Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE],
                         ids=lambda lv: lv.name)
def test_index_comes_from_own_gpa_bits(level):
    # Move only this level's index: the old slot is now unused, so the walk
    # must read the new slot (else it sees a zero entry there, or the old one).
    gpa2 = GPA ^ (1 << level.shift)
    entries = path("4K")
    mem = build(entries, gpa2)
    t = walk(mem, Eptp(T_PML4), gpa2, Access.READ)
    assert_ok(t, "4K", gpa=gpa2)
    assert t.steps[LEVELS.index(level)].addr == TABLE_OF[level] + gpa_index(gpa2, level) * 8
    # and the original GPA now misses at exactly that level
    t0 = walk(mem, Eptp(T_PML4), GPA, Access.READ)
    assert t0.outcome is Outcome.VIOLATION
    assert_stopped_at(t0, level)


def test_pml4_base_comes_from_eptp():
    entries = path("4K")
    mem = build(entries)
    other = 0x0090_0000
    t = walk(mem, Eptp(other), GPA, Access.READ)
    assert t.outcome is Outcome.VIOLATION
    assert t.steps[0].addr == other + gpa_index(GPA, Level.PML4E) * 8


def test_pte_bit7_ignored():
    entries = path("4K")
    entries[Level.PTE] |= EPT_LEAF
    t, _ = run(entries)
    assert_ok(t, "4K")


@pytest.mark.parametrize("size", SIZES)
def test_ignore_pat_bit_does_not_change_result(size):
    entries = path(size)
    entries[LEAF_LEVEL[size]] &= ~EPT_IGNORE_PAT
    t, _ = run(entries)
    assert_ok(t, size)


@pytest.mark.parametrize("memtype", [0, 1, 4, 5, 6])
@pytest.mark.parametrize("size", SIZES)
def test_valid_leaf_memtype_reported(size, memtype):
    t, _ = run(path(size, memtype=memtype))
    assert_ok(t, size, memtype=memtype)


@pytest.mark.parametrize("memtype", [2, 3, 7])
@pytest.mark.parametrize("size", SIZES)
def test_invalid_leaf_memtype_is_misconfig(size, memtype):
    for access in ACCESSES:
        t, _ = run(path(size, memtype=memtype), access)
        assert t.outcome is Outcome.MISCONFIG
        assert t.qual is None
        assert_stopped_at(t, LEAF_LEVEL[size])


def test_walk_accepts_a_read_function():
    mem = build(path("4K"))
    seen = []

    def read(addr):
        seen.append(addr)
        return mem.peek(addr)

    t = walk(read, Eptp(T_PML4), GPA, Access.READ)
    assert_ok(t, "4K")
    assert seen == [entry_addr(lv) for lv in LEVELS]


# --------------------------------------------------------------------------
# Not present
# --------------------------------------------------------------------------

@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_not_present_at_each_level(case, access):
    size, lv = case
    entries = path(size)
    entries[lv] = 0
    t, _ = run(entries, access)
    assert t.outcome is Outcome.VIOLATION
    assert_stopped_at(t, lv)
    assert t.qual == ACCESS_BIT[access]        # bits 3-5 are 0: the entry has no R/W/X


@pytest.mark.parametrize("junk", [
    MASK64 & ~EPT_RWX,                 # every other bit
    0x000F_C000_0000_00F8,             # reserved high bits + bits 7:3
    (7 << 3) | EPT_LEAF,               # memory type 7, leaf
    (2 << 3),                          # memory type 2
    0x3FFF_F000 | EPT_LEAF,            # 1G reserved bits
], ids=lambda v: f"{v:#x}")
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_not_present_reserved_bits_not_checked(case, junk):
    size, lv = case
    entries = path(size)
    entries[lv] = junk
    for access in ACCESSES:
        t, _ = run(entries, access)
        assert t.outcome is Outcome.VIOLATION, t.reason
        assert_stopped_at(t, lv)
        assert t.qual == ACCESS_BIT[access]


def test_empty_memory_is_violation_at_pml4e():
    t = walk(PhysicalMemory(), Eptp(T_PML4), GPA, Access.WRITE)
    assert t.outcome is Outcome.VIOLATION
    assert t.qual == 2
    assert_stopped_at(t, Level.PML4E)


# --------------------------------------------------------------------------
# Misconfigurations
# --------------------------------------------------------------------------

@pytest.mark.parametrize("rwx", [0b010, 0b110], ids=["W", "WX"])
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_write_without_read_is_misconfig(case, rwx):
    size, lv = case
    for access in ACCESSES:
        for xo in (True, False):
            t, _ = run(path(size, {lv: rwx}), access, EptConfig(execute_only=xo))
            assert t.outcome is Outcome.MISCONFIG
            assert t.qual is None
            assert_stopped_at(t, lv)


@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_execute_only_supported(case):
    size, lv = case
    t, _ = run(path(size, {lv: EPT_X}), Access.FETCH, EptConfig(execute_only=True))
    assert_ok(t, size)
    for access in (Access.READ, Access.WRITE):
        t, _ = run(path(size, {lv: EPT_X}), access, EptConfig(execute_only=True))
        assert t.outcome is Outcome.VIOLATION
        assert t.qual == ACCESS_BIT[access] | (EPT_X << 3)


@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_execute_only_unsupported_is_misconfig(case):
    size, lv = case
    for access in ACCESSES:
        t, _ = run(path(size, {lv: EPT_X}), access, EptConfig(execute_only=False))
        assert t.outcome is Outcome.MISCONFIG
        assert_stopped_at(t, lv)


@pytest.mark.parametrize("rwx", [0b001, 0b011, 0b101, 0b111])
def test_execute_only_unsupported_other_combinations_fine(rwx):
    # Only exactly X (100) is affected by the execute-only parameter.
    t, _ = run(path("4K", {Level.PDE: rwx}), Access.READ, EptConfig(execute_only=False))
    assert_ok(t, "4K")


def reserved_cases():
    cases = []
    for bit in (3, 4, 5, 6, 7):
        cases.append(("4K", Level.PML4E, bit))
    for size in SIZES:
        for lv in (Level.PDPTE, Level.PDE):
            if lv in levels_of(size) and lv != LEAF_LEVEL[size]:
                for bit in (3, 4, 5, 6):
                    cases.append((size, lv, bit))
    for bit in range(12, 30):
        cases.append(("1G", Level.PDPTE, bit))
    for bit in range(12, 21):
        cases.append(("2M", Level.PDE, bit))
    return cases


@pytest.mark.parametrize("size,level,bit", reserved_cases(),
                         ids=lambda v: v.name if isinstance(v, Level) else str(v))
def test_reserved_bit_is_misconfig(size, level, bit):
    entries = path(size)
    entries[level] |= 1 << bit
    for access in ACCESSES:
        t, mem = run(entries, access, ad=True)
        assert t.outcome is Outcome.MISCONFIG, t.reason
        assert t.qual is None
        assert_stopped_at(t, level)
        assert mem.cases == 0


@pytest.mark.parametrize("size,level", [(s, lv) for s, lv in path_cases() if lv != LEAF_LEVEL[s]],
                         ids=lambda v: v.name if isinstance(v, Level) else str(v))
@pytest.mark.parametrize("memtype", [0, 1, 4, 6])
def test_nonleaf_memtype_bits_reserved(size, level, memtype):
    entries = path(size)
    entries[level] |= (memtype << 3) | EPT_IGNORE_PAT
    t, _ = run(entries)
    assert t.outcome is Outcome.MISCONFIG
    assert_stopped_at(t, level)


@pytest.mark.parametrize("maxpa,bit", [(46, 46), (46, 47), (46, 51), (39, 39), (39, 45),
                                       (39, 51), (36, 36), (36, 50)])
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_high_reserved_bits_misconfig(case, maxpa, bit):
    size, lv = case
    entries = path(size)
    entries[lv] |= 1 << bit
    cfg = EptConfig(maxphyaddr=maxpa)
    ok, _ = run(path(size), Access.READ, cfg)      # sanity: fine without the bit
    assert_ok(ok, size)
    t, _ = run(entries, Access.READ, cfg)
    assert t.outcome is Outcome.MISCONFIG, t.reason
    assert_stopped_at(t, lv)


@pytest.mark.parametrize("maxpa", [36, 39, 46, 52])
@pytest.mark.parametrize("size", SIZES)
def test_top_address_bit_is_address_in_leaf(size, maxpa):
    # Bit MAXPHYADDR-1 of a leaf is part of the output address, not reserved.
    entries = path(size)
    top = 1 << (maxpa - 1)
    frame = (FRAME[size] & ((1 << (maxpa - 1)) - 1) & ~(PAGE[size] - 1)) | top
    entries[LEAF_LEVEL[size]] = (entries[LEAF_LEVEL[size]] & ~((1 << 52) - (1 << 12))) | frame
    t, _ = run(entries, Access.READ, EptConfig(maxphyaddr=maxpa))
    assert_ok(t, size, frame=frame)
    assert t.hpa & top


@pytest.mark.parametrize("level", [Level.PML4E, Level.PDPTE, Level.PDE], ids=lambda lv: lv.name)
def test_maxphyaddr52_bit51_is_table_address(level):
    # With MAXPHYADDR 52 there are no high reserved bits: bit 51 of a non-leaf
    # entry moves the next table up by 2^51.
    cfg = EptConfig(maxphyaddr=52)
    mem = PhysicalMemory(52)
    entries = path("4K")
    entries[level] |= 1 << 51
    i = LEVELS.index(level)
    nxt = LEVELS[i + 1]
    # write every entry at its slot, the one below `level` in the moved table
    for lv, e in entries.items():
        addr = entry_addr(lv)
        if lv == nxt:
            addr += 1 << 51
        mem.write(addr, e)
    t = translate(mem, Eptp(T_PML4), GPA, Access.READ, cfg)
    assert_ok(t, "4K")
    assert t.steps[i + 1].addr == (1 << 51) + entry_addr(nxt)
    # the same tables with MAXPHYADDR 46: bit 51 is reserved
    mem46 = build(entries)
    t46 = translate(mem46, Eptp(T_PML4), GPA, Access.READ, EptConfig(maxphyaddr=46))
    assert t46.outcome is Outcome.MISCONFIG
    assert_stopped_at(t46, level)


@pytest.mark.parametrize("size", SIZES)
def test_maxphyaddr52_bit51_in_leaf_is_address(size):
    entries = path(size)
    entries[LEAF_LEVEL[size]] |= 1 << 51
    t, _ = run(entries, Access.WRITE, EptConfig(maxphyaddr=52))
    assert_ok(t, size, frame=FRAME[size] | (1 << 51))


IGNORED_BITS = (8, 9, 10, 11) + tuple(range(52, 64))


@pytest.mark.parametrize("bit", IGNORED_BITS)
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_ignored_bits_no_misconfig(case, bit):
    size, lv = case
    entries = path(size)
    entries[lv] |= 1 << bit
    for access in ACCESSES:
        t, _ = run(entries, access)
        assert_ok(t, size)


@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_all_ignored_bits_together_no_misconfig(case):
    size, lv = case
    entries = path(size)
    for b in IGNORED_BITS:
        entries[lv] |= 1 << b
    for maxpa in (39, 46, 52):
        t, _ = run(entries, Access.WRITE, EptConfig(maxphyaddr=maxpa))
        assert_ok(t, size)


# --------------------------------------------------------------------------
# Precedence
# --------------------------------------------------------------------------

MISCONFIGS = {
    "W-only": lambda e, lv: (e & ~EPT_RWX) | EPT_W,
    "reserved51": lambda e, lv: e | (1 << 51),
    "memtype7-or-reserved": lambda e, lv: e | (7 << 3),
}


@pytest.mark.parametrize("kind", list(MISCONFIGS))
@pytest.mark.parametrize("np_level,bad_level", [
    (a, b) for a, b in itertools.combinations(LEVELS, 2)], ids=lambda lv: lv.name)
def test_not_present_above_misconfig_wins(np_level, bad_level, kind):
    entries = path("4K")
    entries[bad_level] = MISCONFIGS[kind](entries[bad_level], bad_level)
    # sanity: without the not-present entry it is a misconfig
    t, _ = run(entries)
    assert t.outcome is Outcome.MISCONFIG
    entries[np_level] = 0
    for access in ACCESSES:
        t, _ = run(entries, access)
        assert t.outcome is Outcome.VIOLATION
        assert t.qual == ACCESS_BIT[access]
        assert_stopped_at(t, np_level)


@pytest.mark.parametrize("kind", list(MISCONFIGS))
@pytest.mark.parametrize("perm_level,bad_level", [
    (a, b) for a in LEVELS for b in LEVELS if a != b], ids=lambda lv: lv.name)
def test_misconfig_wins_over_permission_violation(perm_level, bad_level, kind):
    # perm_level lacks W (it keeps R and X); bad_level is misconfigured.
    entries = path("4K", {perm_level: EPT_R | EPT_X})
    entries[bad_level] = MISCONFIGS[kind](entries[bad_level], bad_level)
    t, mem = run(entries, Access.WRITE, ad=True)
    assert t.outcome is Outcome.MISCONFIG, t.reason
    assert t.qual is None
    assert_stopped_at(t, bad_level)
    assert mem.cases == 0


def test_misconfig_wins_pml4e_no_write_pte_misconfigured():
    entries = path("4K", {Level.PML4E: EPT_R | EPT_X})
    entries[Level.PTE] |= 1 << 50
    t, _ = run(entries, Access.WRITE)
    assert t.outcome is Outcome.MISCONFIG
    assert_stopped_at(t, Level.PTE)


def test_misconfig_below_not_present_sibling_is_not_reached():
    # A misconfigured entry in another slot of the same table is never read.
    entries = path("4K")
    mem = build(entries)
    other = T_PT + ((gpa_index(GPA, Level.PTE) + 1) % 512) * 8
    mem.write(other, EPT_W | (1 << 50))
    t = walk(mem, Eptp(T_PML4), GPA, Access.READ)
    assert_ok(t, "4K")


# --------------------------------------------------------------------------
# The R/W/X matrix: every combination at every level of every path
# --------------------------------------------------------------------------

def oracle(rwx: int, access: Access, execute_only: bool):
    if rwx == 0:
        return Outcome.VIOLATION, ACCESS_BIT[access], True
    if rwx & EPT_W and not rwx & EPT_R:
        return Outcome.MISCONFIG, None, True
    if rwx == EPT_X and not execute_only:
        return Outcome.MISCONFIG, None, True
    if rwx & PERM_BIT[access]:
        return Outcome.OK, None, False
    return Outcome.VIOLATION, ACCESS_BIT[access] | (rwx << 3), False


@pytest.mark.parametrize("execute_only", [True, False], ids=["xo", "no-xo"])
@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("rwx", range(8), ids=lambda v: f"rwx{v:03b}")
@pytest.mark.parametrize("case", path_cases(), ids=path_ids)
def test_permission_matrix(case, rwx, access, execute_only):
    size, lv = case
    cfg = EptConfig(execute_only=execute_only)
    t, mem = run(path(size, {lv: rwx}), access, cfg)
    outcome, qual, stops_here = oracle(rwx, access, execute_only)
    assert t.outcome is outcome, t.reason
    assert t.qual == qual
    if outcome is Outcome.OK:
        assert_ok(t, size)
    elif stops_here:
        assert_stopped_at(t, lv)
    else:
        # a permission violation is found after the whole walk
        assert [s.level for s in t.steps] == list(levels_of(size))
        assert t.hpa is None
    if t.qual is not None:
        assert t.qual >> 6 == 0


VALID_PERMS = (EPT_R, EPT_R | EPT_W, EPT_R | EPT_X, EPT_RWX, EPT_X)


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_permission_and_over_all_levels(size, access):
    levels = levels_of(size)
    for combo in itertools.product(VALID_PERMS, repeat=len(levels)):
        perms = dict(zip(levels, combo))
        t, _ = run(path(size, perms), access)
        and_ = EPT_RWX
        for p in combo:
            and_ &= p
        if and_ & PERM_BIT[access]:
            assert t.outcome is Outcome.OK, (combo, t.reason)
            assert t.hpa == expected_hpa(size)
        else:
            assert t.outcome is Outcome.VIOLATION, (combo, t.reason)
            assert t.qual == ACCESS_BIT[access] | (and_ << 3), combo
            assert len(t.steps) == len(levels)


@pytest.mark.parametrize("perms,access,qual", [
    ({Level.PML4E: EPT_R | EPT_X, Level.PDE: EPT_R | EPT_W}, Access.WRITE, 0b0001_010),
    ({Level.PML4E: EPT_R | EPT_X, Level.PDE: EPT_R | EPT_W}, Access.FETCH, 0b0001_100),
    ({Level.PTE: EPT_X}, Access.READ, 0b100_001),
    ({Level.PTE: EPT_X}, Access.WRITE, 0b100_010),
    ({Level.PDPTE: EPT_R}, Access.FETCH, 0b001_100),
    ({Level.PDPTE: EPT_R | EPT_W}, Access.FETCH, 0b011_100),
    ({Level.PML4E: EPT_R | EPT_X, Level.PTE: EPT_R | EPT_W}, Access.WRITE, 0b001_010),
    ({Level.PML4E: EPT_X, Level.PTE: EPT_R}, Access.READ, 0b000_001),
])
def test_qual_layout(perms, access, qual):
    t, _ = run(path("4K", perms), access)
    assert t.outcome is Outcome.VIOLATION
    assert t.qual == qual
    assert t.qual & 7 == ACCESS_BIT[access]
    assert t.qual & 0b111_000 == t.perms << 3
    assert t.qual >> 6 == 0


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
def test_qual_not_present_after_partial_perms(access):
    # Entries above the not-present one lack some permissions: bits 3-5 are still 0.
    entries = path("4K", {Level.PML4E: EPT_R, Level.PDPTE: EPT_R | EPT_X})
    entries[Level.PDE] = 0
    t, _ = run(entries, access)
    assert t.qual == ACCESS_BIT[access]


# --------------------------------------------------------------------------
# Accessed / dirty flags
# --------------------------------------------------------------------------

@pytest.mark.parametrize("access", [Access.READ, Access.FETCH], ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_ad_read_sets_accessed_everywhere_no_dirty(size, access):
    entries = path(size)
    t, mem = run(entries, access, ad=True)
    assert_ok(t, size)
    for lv in levels_of(size):
        v = mem.peek(entry_addr(lv))
        assert v == entries[lv] | EPT_A, lv
        assert not v & EPT_D
    assert mem.cases == len(levels_of(size))
    assert t.retries == 0


@pytest.mark.parametrize("size", SIZES)
def test_ad_write_sets_dirty_in_leaf_only(size):
    entries = path(size)
    t, mem = run(entries, Access.WRITE, ad=True)
    assert_ok(t, size)
    leaf = LEAF_LEVEL[size]
    for lv in levels_of(size):
        v = mem.peek(entry_addr(lv))
        if lv == leaf:
            assert v == entries[lv] | EPT_A | EPT_D
        else:
            assert v == entries[lv] | EPT_A
            assert not v & EPT_D


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_ad_writes_match_memory_changes(size, access):
    entries = path(size)
    mem = build(entries)
    before = snapshot(mem)
    stores = []
    mem.observe(lambda a, o, n, s: stores.append((a, o, n, s)))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, access)
    after = snapshot(mem)
    changed = {a for a in set(before) | set(after) if before.get(a) != after.get(a)}
    assert {a for a, _, _ in t.ad_writes} == changed
    for a, old, new in t.ad_writes:
        assert before[a] == old and after[a] == new
    assert [(a, o, n) for a, o, n, _ in stores] == list(t.ad_writes)
    assert all(s == "walker" for *_, s in stores)
    assert list(t.ad_writes) == ad_update_plan(walk(build(entries), Eptp(T_PML4), GPA, access))


def fault_cases():
    """(name, entries, access) for translations that fault."""
    out = []
    for size in SIZES:
        e = path(size, {LEAF_LEVEL[size]: EPT_R})
        out.append((f"{size}-perm-write", e, Access.WRITE))
        e = path(size, {Level.PML4E: EPT_R | EPT_W})
        out.append((f"{size}-perm-fetch", e, Access.FETCH))
        e = path(size)
        e[LEAF_LEVEL[size]] = 0
        out.append((f"{size}-leaf-not-present", e, Access.READ))
        e = path(size, memtype=7)
        out.append((f"{size}-leaf-memtype7", e, Access.READ))
        e = path(size)
        e[Level.PML4E] |= 1 << 7
        out.append((f"{size}-pml4e-reserved", e, Access.WRITE))
    return out


@pytest.mark.parametrize("name,entries,access", fault_cases(), ids=[c[0] for c in fault_cases()])
def test_ad_nothing_written_on_fault(name, entries, access):
    t, mem = run(entries, access, ad=True)
    assert t.outcome is not Outcome.OK
    assert snapshot(mem) == {entry_addr(lv): e for lv, e in entries.items() if e}
    assert mem.cases == 0
    assert t.ad_writes == ()


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_ad_disabled_writes_nothing(size, access):
    entries = path(size)
    mem = build(entries)
    before = snapshot(mem)
    writes = mem.writes
    t = translate(mem, Eptp(T_PML4, ad_enabled=False), GPA, access)
    assert_ok(t, size)
    assert mem.cases == 0
    assert mem.writes == writes
    assert snapshot(mem) == before
    assert t.ad_writes == ()


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
def test_walk_never_writes_even_with_ad(access):
    mem = build(path("4K"))
    before = snapshot(mem)
    t = walk(mem, Eptp(T_PML4, ad_enabled=True), GPA, access)
    assert t.outcome is Outcome.OK
    assert mem.cases == 0
    assert snapshot(mem) == before


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_ad_already_set_no_cas(size, access):
    entries = {lv: e | EPT_A for lv, e in path(size).items()}
    entries[LEAF_LEVEL[size]] |= EPT_D
    t, mem = run(entries, access, ad=True)
    assert_ok(t, size)
    assert mem.cases == 0
    assert t.ad_writes == ()
    assert snapshot(mem) == {entry_addr(lv): e for lv, e in entries.items()}


@pytest.mark.parametrize("size", SIZES)
def test_ad_accessed_set_write_needs_only_dirty(size):
    entries = {lv: e | EPT_A for lv, e in path(size).items()}
    leaf = LEAF_LEVEL[size]
    t, mem = run(entries, Access.WRITE, ad=True)
    assert_ok(t, size)
    assert mem.cases == 1
    assert t.ad_writes == ((entry_addr(leaf), entries[leaf], entries[leaf] | EPT_D),)
    # a read of the same entries needs nothing
    t, mem = run(entries, Access.READ, ad=True)
    assert mem.cases == 0


def test_ad_only_missing_entries_get_cas():
    entries = path("4K")
    entries[Level.PDPTE] |= EPT_A
    entries[Level.PTE] |= EPT_A
    t, mem = run(entries, Access.READ, ad=True)
    assert mem.cases == 2
    assert [a for a, _, _ in t.ad_writes] == [entry_addr(Level.PML4E), entry_addr(Level.PDE)]


def test_ad_nonleaf_dirty_bit_untouched_by_write():
    # bit 9 of a non-leaf entry is ignored: it must not be set, nor cleared.
    entries = path("4K")
    entries[Level.PDE] |= EPT_D
    t, mem = run(entries, Access.WRITE, ad=True)
    assert mem.peek(entry_addr(Level.PDE)) == entries[Level.PDE] | EPT_A
    assert mem.peek(entry_addr(Level.PDPTE)) == entries[Level.PDPTE] | EPT_A


# --------------------------------------------------------------------------
# A/D compare-and-swap races
# --------------------------------------------------------------------------

class RacyMemory(PhysicalMemory):
    """Runs ``hook(self)`` right before the walker's n-th CAS (1-based).

    With ``every=True`` the hook runs before every walker CAS.
    """

    def __init__(self, maxphyaddr=46, hook=None, nth=1, every=False):
        super().__init__(maxphyaddr)
        self.hook = hook
        self.nth = nth
        self.every = every
        self.walker_cases = 0
        self.hook_runs = 0

    def cas(self, addr, expected, new, source="host"):
        if source == "walker":
            self.walker_cases += 1
            if self.hook and (self.every or self.walker_cases == self.nth):
                self.hook_runs += 1
                self.hook(self)
        return super().cas(addr, expected, new, source)


def racy(entries, hook, nth=1, every=False):
    mem = RacyMemory(hook=hook, nth=nth, every=every)
    build(entries, mem=mem)
    stores = []
    mem.observe(lambda a, o, n, s: stores.append((a, o, n, s)))
    return mem, stores


def assert_walker_stores_are_ad_writes(t, stores):
    walker = [(a, o, n) for a, o, n, s in stores if s == "walker"]
    assert walker == list(t.ad_writes)
    for _a, o, n in walker:
        assert n & ~(EPT_A | EPT_D) == o & ~(EPT_A | EPT_D)   # only A/D ever added
        assert n & o == o


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_race_leaf_moved_to_new_frame(size, access):
    entries = path(size)
    leaf = LEAF_LEVEL[size]
    new_frame = FRAME[size] + 16 * PAGE[size]
    new_leaf = make_leaf_entry(new_frame, leaf, EPT_RWX, MemType.WT)
    mem, stores = racy(entries, lambda m: m.write(entry_addr(leaf), new_leaf, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, access)
    assert mem.hook_runs == 1
    assert t.retries == 1
    assert_ok(t, size, memtype=MemType.WT, frame=new_frame)
    want = new_leaf | EPT_A | (EPT_D if access is Access.WRITE else 0)
    assert mem.peek(entry_addr(leaf)) == want          # old frame not resurrected
    for lv in levels_of(size):
        if lv != leaf:
            assert mem.peek(entry_addr(lv)) == entries[lv] | EPT_A
    assert_walker_stores_are_ad_writes(t, stores)


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
@pytest.mark.parametrize("size", SIZES)
def test_race_leaf_made_not_present(size, access):
    entries = path(size)
    leaf = LEAF_LEVEL[size]
    mem, stores = racy(entries, lambda m: m.swap(entry_addr(leaf), 0, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, access)
    assert t.retries == 1
    assert t.outcome is Outcome.VIOLATION
    assert t.qual == ACCESS_BIT[access]
    assert_stopped_at(t, leaf)
    assert mem.peek(entry_addr(leaf)) == 0              # no resurrection
    assert all(a != entry_addr(leaf) for a, _, _ in t.ad_writes)
    assert_walker_stores_are_ad_writes(t, stores)


@pytest.mark.parametrize("cleared,access", [
    (EPT_W, Access.WRITE), (EPT_R | EPT_W, Access.READ), (EPT_X, Access.FETCH)],
    ids=["noW-write", "noRW-read", "noX-fetch"])
@pytest.mark.parametrize("size", SIZES)
def test_race_leaf_permission_lowered(size, cleared, access):
    entries = path(size)
    leaf = LEAF_LEVEL[size]
    lowered = entries[leaf] & ~cleared
    mem, stores = racy(entries, lambda m: m.write(entry_addr(leaf), lowered, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, access)
    assert t.retries == 1
    assert t.outcome is Outcome.VIOLATION
    assert t.qual == ACCESS_BIT[access] | ((lowered & EPT_RWX) << 3)
    assert mem.peek(entry_addr(leaf)) == lowered        # exactly the host's value
    assert_walker_stores_are_ad_writes(t, stores)


@pytest.mark.parametrize("level", [Level.PDPTE, Level.PDE], ids=lambda lv: lv.name)
def test_race_upper_entry_write_removed(level):
    # The host clears W in an upper entry before the walker's first CAS.
    entries = path("4K")
    lowered = entries[level] & ~EPT_W
    mem, stores = racy(entries, lambda m: m.write(entry_addr(level), lowered, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.WRITE)
    assert t.retries == 1
    assert t.outcome is Outcome.VIOLATION
    assert t.qual == 2 | ((EPT_R | EPT_X) << 3)
    assert mem.peek(entry_addr(level)) == lowered
    assert mem.peek(entry_addr(Level.PTE)) == entries[Level.PTE]   # leaf never got A/D
    assert_walker_stores_are_ad_writes(t, stores)


@pytest.mark.parametrize("size", SIZES)
def test_race_host_sets_software_bit_kept(size):
    # The host changes the leaf in a harmless way (a software bit): the walker
    # retries and ORs in A/D without losing the host's bit.
    entries = path(size)
    leaf = LEAF_LEVEL[size]
    sw = 1 << 61
    mem, stores = racy(entries, lambda m: m.write(entry_addr(leaf), entries[leaf] | sw, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.WRITE)
    assert t.retries == 1
    assert_ok(t, size)
    assert mem.peek(entry_addr(leaf)) == entries[leaf] | sw | EPT_A | EPT_D
    assert_walker_stores_are_ad_writes(t, stores)


@pytest.mark.parametrize("level", [Level.PML4E, Level.PDPTE, Level.PDE], ids=lambda lv: lv.name)
def test_race_host_clears_accessed_of_upper_entry_before_cas(level):
    # The upper entry had A when walked (so no CAS is owed on it); the host
    # clears A before the walker's first CAS.  The walker must not write the
    # entry back (a plain write would resurrect A).
    entries = path("4K")
    entries[level] |= EPT_A
    cleared = entries[level] & ~EPT_A
    mem, stores = racy(entries, lambda m: m.write(entry_addr(level), cleared, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.WRITE)
    assert_ok(t, "4K")
    assert mem.hook_runs == 1
    assert mem.peek(entry_addr(level)) == cleared
    assert all(a != entry_addr(level) for a, _, _ in t.ad_writes)
    assert_walker_stores_are_ad_writes(t, stores)


def test_race_host_clears_accessed_just_set_by_walker():
    # After the walker set A in the PML4E, the host clears it before the leaf CAS.
    entries = path("4K")
    pml4e = entry_addr(Level.PML4E)
    mem, stores = racy(entries, lambda m: m.write(pml4e, entries[Level.PML4E], "host"), nth=4)
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.WRITE)
    assert_ok(t, "4K")
    assert mem.hook_runs == 1
    assert mem.peek(pml4e) == entries[Level.PML4E]        # host's clear stands
    assert mem.peek(entry_addr(Level.PTE)) == entries[Level.PTE] | EPT_A | EPT_D
    assert_walker_stores_are_ad_writes(t, stores)


def test_race_host_clears_accessed_of_leaf_before_dirty_cas():
    # Every entry has A, the PTE no D; the walk owes only the leaf D.
    # Before that CAS the host clears A in the leaf (pmap A harvesting): the
    # CAS fails, the walk restarts and sets A and D on the leaf from the host's value.
    entries = {lv: e | EPT_A for lv, e in path("4K").items()}
    pte = entry_addr(Level.PTE)
    host_leaf = entries[Level.PTE] & ~EPT_A
    mem, stores = racy(entries, lambda m: m.write(pte, host_leaf, "host"))
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.WRITE)
    assert t.retries == 1
    assert_ok(t, "4K")
    assert mem.peek(pte) == host_leaf | EPT_A | EPT_D
    assert t.ad_writes == ((pte, host_leaf, host_leaf | EPT_A | EPT_D),)
    assert_walker_stores_are_ad_writes(t, stores)


def test_race_livelock_bounded():
    entries = path("4K")
    pte = entry_addr(Level.PTE)

    def bump(m):
        # a fresh software value in bits 59:52 each time (no ABA)
        v = m.peek(pte)
        m.write(pte, (v & ~(0xFF << 52)) | ((((v >> 52) & 0xFF) + 1) << 52), "host")

    mem, _ = racy(entries, bump, every=True)
    with pytest.raises(WalkLivelock):
        translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.READ, max_retries=5)
    assert mem.peek(pte) & EPT_A == 0          # the leaf CAS never landed


def test_race_failed_cas_does_not_write():
    # Directly: the CAS the walker issues against a changed word leaves the host's word.
    entries = path("4K")
    pte = entry_addr(Level.PTE)
    host = entries[Level.PTE] & ~EPT_RWX       # not present
    mem, stores = racy(entries, lambda m: m.write(pte, host, "host"), nth=4)
    t = translate(mem, Eptp(T_PML4, ad_enabled=True), GPA, Access.READ)
    assert t.outcome is Outcome.VIOLATION and t.retries == 1
    assert [s for s in stores if s[0] == pte] == [(pte, entries[Level.PTE], host, "host")]


# --------------------------------------------------------------------------
# GPA range
# --------------------------------------------------------------------------

@pytest.mark.parametrize("gpa", [1 << 48, (1 << 48) + 0x1000, 1 << 63, -1, -4096],
                         ids=lambda g: f"{g:#x}")
@pytest.mark.parametrize("fn", [walk, translate], ids=["walk", "translate"])
def test_gpa_out_of_48_bits_raises(fn, gpa):
    mem = build(path("4K"))
    with pytest.raises(ValueError):
        fn(mem, Eptp(T_PML4, ad_enabled=True), gpa, Access.READ)
    assert mem.cases == 0


@pytest.mark.parametrize("gpa", [1.0, "0x1000", None, True])
def test_gpa_not_int_raises(gpa):
    with pytest.raises(ValueError):
        walk(PhysicalMemory(), Eptp(T_PML4), gpa, Access.READ)


def test_gpa_highest_48bit_address_walks():
    gpa = (1 << 48) - 1
    entries = path("4K")
    t, _ = run(entries, gpa=gpa)
    assert_ok(t, "4K", gpa=gpa)
    assert t.hpa == FRAME["4K"] | 0xFFF
