# amaranth: UnusedElaboratable=no
"""The RTL page-walk unit in pysim, against the golden model.

Every translation goes through the scoreboard (reference walk of the memory
as it stood); most tests also run the model's own ``translate`` on a shadow
copy of the tables and compare results and A/D bits word for word.  Every
``translate`` has a cycle bound: a hang raises :class:`HangError`.
"""


import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from model.formats import (
    EPT_A, EPT_D, EPT_RWX, EPT_W, EPT_X, Access, EptConfig, Eptp, EptpError,
    Level, Outcome, make_leaf_entry, reserved_mask,
)
from model.physmem import PhysicalMemory
from model.walk import translate as model_translate
from sim.cosim.dram import DramConfig
from sim.cosim.harness import HangError
from sim.cosim.tables import random_table_set

from rtl_util import Rig

GPA = 0x0000_7F12_3456_7ABC            # distinct index at every level
PAGE = {Level.PTE: 0x4000_0000, Level.PDE: 0x4000_0000, Level.PDPTE: 0x4000_0000}
BOUND = 2000                            # cycles: any single translation here answers within it
ACCESSES = (Access.READ, Access.WRITE, Access.FETCH)


def shadow_of(memory: PhysicalMemory) -> PhysicalMemory:
    copy = PhysicalMemory(memory.maxphyaddr)
    for addr, value in memory.nonzero_words():
        copy.write(addr, value, source="init")
    return copy


def check_against_model(rig: Rig, shadow: PhysicalMemory, eptp: Eptp, gpa: int, access: Access):
    """Translate on the RTL and on the model; results and DRAM words must agree."""
    want = model_translate(shadow, eptp, gpa, access, rig.config)
    got = rig.translate(gpa, access, limit=BOUND)
    assert got.architectural() == want.architectural(), (hex(gpa), access, want.reason)
    return got, want


# --- random table sets -----------------------------------------------------------------

_shared = {}


def shared_rig() -> Rig:
    """One unit for every hypothesis example: table sets never overlap."""
    if "rig" not in _shared:
        _shared["rig"] = Rig()
        _shared["base"] = 0x100_0000
    return _shared["rig"]


def run_table_set(seed: int, coverage: set | None = None) -> None:
    rig = shared_rig()
    ts, _shared["base"] = random_table_set(rig.memory, _shared["base"], seed, n_paths=6)
    shadow = PhysicalMemory()
    for addr, value in ts.words.items():
        shadow.write(addr, value, source="init")
    assert rig.load(ts.eptp)
    for gpa in ts.gpas:
        for access in ACCESSES:
            got, want = check_against_model(rig, shadow, ts.eptp, gpa, access)
            if coverage is not None:
                coverage.add((want.outcome, want.page_size))
    for addr in ts.words:                       # A/D landed exactly where the model put them
        assert rig.memory.peek(addr) == shadow.peek(addr), hex(addr)
    assert rig.harness.dram.corruptions == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_table_sets_match_reference(seed):
    run_table_set(seed)


def test_random_table_sets_cover_every_outcome_and_page_size():
    coverage = set()
    for seed in range(40):
        run_table_set(seed, coverage)
    assert {(Outcome.OK, 1 << 12), (Outcome.OK, 1 << 21), (Outcome.OK, 1 << 30),
            (Outcome.VIOLATION, None), (Outcome.MISCONFIG, None)} <= coverage


# --- every misconfiguration class --------------------------------------------------------

def reserved_cases():
    cases = []
    for level, leaf in ((Level.PML4E, False), (Level.PDPTE, False), (Level.PDE, False),
                        (Level.PDPTE, True), (Level.PDE, True), (Level.PTE, True)):
        mask = reserved_mask(level, leaf, 46)
        for bit in range(64):
            if mask >> bit & 1:
                cases.append((level, leaf, bit))
    return cases


def leaf_level_for(level: Level, leaf: bool) -> Level:
    return level if leaf else Level.PTE


def build(rig: Rig, leaf_level: Level = Level.PTE, ad: bool = True, leaf: int | None = None):
    eptp, addrs = rig.path(GPA, leaf_level, leaf=leaf, ad=ad, page=PAGE.get(leaf_level, 0))
    assert rig.load(eptp)
    return eptp, addrs


def assert_misconfig(rig, eptp, addrs, access=Access.READ):
    shadow = shadow_of(rig.memory)
    before = {a: rig.memory.peek(a) for a in addrs.values()}
    got, want = check_against_model(rig, shadow, eptp, GPA, access)
    assert want.outcome is Outcome.MISCONFIG and got.outcome is Outcome.MISCONFIG, want.reason
    assert {a: rig.memory.peek(a) for a in addrs.values()} == before     # nothing written
    assert rig.harness.dram.cases == 0


@pytest.mark.parametrize("level,leaf,bit", reserved_cases(),
                         ids=[f"{l.name}{'-leaf' if f else ''}-bit{b}" for l, f, b in reserved_cases()])
def test_reserved_bit_is_misconfig(level, leaf, bit):
    rig = Rig()
    eptp, addrs = build(rig, leaf_level_for(level, leaf))
    rig.memory.write(addrs[level], rig.memory.peek(addrs[level]) | 1 << bit)
    assert_misconfig(rig, eptp, addrs)


@pytest.mark.parametrize("level", list(Level), ids=lambda l: l.name)
@pytest.mark.parametrize("rwx", [0b010, 0b110])
def test_write_without_read_is_misconfig(level, rwx):
    rig = Rig()
    eptp, addrs = build(rig)
    rig.memory.write(addrs[level], rig.memory.peek(addrs[level]) & ~EPT_RWX | rwx)
    assert_misconfig(rig, eptp, addrs, Access.WRITE)


@pytest.mark.parametrize("level", list(Level), ids=lambda l: l.name)
def test_execute_only_unsupported_is_misconfig(level):
    rig = Rig(config=EptConfig(execute_only=False))
    eptp, addrs = build(rig)
    rig.memory.write(addrs[level], rig.memory.peek(addrs[level]) & ~EPT_RWX | EPT_X)
    assert_misconfig(rig, eptp, addrs, Access.FETCH)


@pytest.mark.parametrize("level", list(Level), ids=lambda l: l.name)
def test_execute_only_supported_translates_fetches(level):
    rig = Rig()
    eptp, addrs = build(rig)
    rig.memory.write(addrs[level], rig.memory.peek(addrs[level]) & ~EPT_RWX | EPT_X)
    shadow = shadow_of(rig.memory)
    got, _ = check_against_model(rig, shadow, eptp, GPA, Access.FETCH)
    assert got.outcome is Outcome.OK
    got, _ = check_against_model(rig, shadow, eptp, GPA, Access.READ)
    assert got.outcome is Outcome.VIOLATION and got.qual == 0b100_001


@pytest.mark.parametrize("leaf_level", [Level.PTE, Level.PDE, Level.PDPTE], ids=lambda l: l.name)
@pytest.mark.parametrize("memtype", [2, 3, 7])
def test_invalid_leaf_memtype_is_misconfig(leaf_level, memtype):
    rig = Rig()
    eptp, addrs = build(rig, leaf_level)
    entry = rig.memory.peek(addrs[leaf_level]) & ~(7 << 3) | memtype << 3
    rig.memory.write(addrs[leaf_level], entry)
    assert_misconfig(rig, eptp, addrs)


def test_misconfig_below_wins_over_permission_violation_above():
    rig = Rig()
    eptp, addrs = build(rig)
    rig.memory.write(addrs[Level.PML4E], rig.memory.peek(addrs[Level.PML4E]) & ~EPT_W)
    rig.memory.write(addrs[Level.PTE], rig.memory.peek(addrs[Level.PTE]) | 7 << 3)
    assert_misconfig(rig, eptp, addrs, Access.WRITE)


def test_not_present_above_wins_over_misconfig_below():
    rig = Rig()
    eptp, addrs = build(rig)
    rig.memory.write(addrs[Level.PTE], 0xFFF0_0000_0000_0002)      # W-only and reserved bits
    rig.memory.write(addrs[Level.PDE], rig.memory.peek(addrs[Level.PDE]) & ~EPT_RWX)
    got = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert got.outcome is Outcome.VIOLATION and got.qual == 0b000_010


# --- permissions, page sizes, qualification ----------------------------------------------

@pytest.mark.parametrize("leaf_level", [Level.PTE, Level.PDE, Level.PDPTE], ids=lambda l: l.name)
def test_permission_and_over_levels(leaf_level):
    """Each R/W/X combination at each level of each page size, every access."""
    rig = Rig(config=EptConfig(execute_only=True))
    levels = [l for l in Level if l >= leaf_level]
    seen = set()
    for level in levels:
        for rwx in (0b001, 0b011, 0b101, 0b111, 0b100):
            eptp, addrs = build(rig, leaf_level)
            rig.memory.write(addrs[level], rig.memory.peek(addrs[level]) & ~EPT_RWX | rwx)
            shadow = shadow_of(rig.memory)
            for access in ACCESSES:
                got, want = check_against_model(rig, shadow, eptp, GPA, access)
                seen.add(got.outcome)
                if got.outcome is Outcome.VIOLATION:
                    assert got.qual == access.qual_bit | rwx << 3
                else:
                    assert got.page_size == leaf_level.page_size
                    assert got.hpa == PAGE[leaf_level] | GPA & (leaf_level.page_size - 1)
    assert seen == {Outcome.OK, Outcome.VIOLATION}


# --- accessed and dirty ------------------------------------------------------------------

@pytest.mark.parametrize("leaf_level", [Level.PTE, Level.PDE, Level.PDPTE], ids=lambda l: l.name)
def test_ad_bits_in_dram_after_reads_and_writes(leaf_level):
    rig = Rig()
    eptp, addrs = build(rig, leaf_level)
    used = [addrs[l] for l in Level if l >= leaf_level]
    assert not any(rig.memory.peek(a) & (EPT_A | EPT_D) for a in used)

    t = rig.translate(GPA, Access.READ, limit=BOUND)
    assert t.outcome is Outcome.OK
    assert all(rig.memory.peek(a) & EPT_A for a in used)
    assert not any(rig.memory.peek(a) & EPT_D for a in used)
    cases = rig.harness.dram.cases
    assert cases == len(used)                       # one CAS per entry lacking A

    rig.translate(GPA, Access.READ, limit=BOUND)    # everything already has A: no CAS
    assert rig.harness.dram.cases == cases

    rig.translate(GPA, Access.WRITE, limit=BOUND)   # only D on the leaf
    assert rig.harness.dram.cases == cases + 1
    leaf = addrs[leaf_level]
    assert rig.memory.peek(leaf) & EPT_D
    assert not any(rig.memory.peek(a) & EPT_D for a in used if a != leaf)
    assert rig.harness.dram.corruptions == []


def test_faults_and_disabled_ad_write_nothing():
    rig = Rig()
    eptp, addrs = build(rig)
    rig.memory.write(addrs[Level.PTE], rig.memory.peek(addrs[Level.PTE]) & ~EPT_W)
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert t.outcome is Outcome.VIOLATION
    assert rig.harness.dram.cases == 0 and not any(rig.memory.peek(a) & EPT_A for a in addrs.values())

    rig2 = Rig()
    eptp, addrs = build(rig2, ad=False)
    for access in ACCESSES:
        assert rig2.translate(GPA, access, limit=BOUND).outcome is Outcome.OK
    assert rig2.harness.dram.cases == 0 and not any(rig2.memory.peek(a) & EPT_A for a in addrs.values())


# --- CAS races ---------------------------------------------------------------------------

def race(rig: Rig, addr: int, new_value):
    """Between cycles, once the walker's first CAS is queued in the DRAM but not
    yet performed, the host stores ``new_value(old)`` at ``addr``."""
    state = {"fired": False}

    def hook(cycle):
        if not state["fired"] and any(r.op == "cas" and not r.done for r in rig.harness.dram.queue):
            rig.memory.write(addr, new_value(rig.memory.peek(addr)), source="host")
            state["fired"] = True
    rig.harness.hooks.append(hook)
    return state


def test_cas_race_entry_removed_no_resurrection():
    rig = Rig()
    eptp, addrs = build(rig)
    state = race(rig, addrs[Level.PTE], lambda old: 0)
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert state["fired"]
    assert t.retries >= 1
    assert t.outcome is Outcome.VIOLATION and t.qual == 0b000_010      # the new tables
    assert rig.memory.peek(addrs[Level.PTE]) == 0                      # not resurrected
    assert rig.harness.dram.cas_failures >= 1 and rig.harness.dram.corruptions == []


def test_cas_race_frame_changed_answers_new_frame():
    rig = Rig()
    eptp, addrs = build(rig)
    new_frame = 0x7777_7000
    state = race(rig, addrs[Level.PTE], lambda old: make_leaf_entry(new_frame))
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert state["fired"] and t.retries >= 1
    assert t.outcome is Outcome.OK and t.hpa == new_frame | GPA & 0xFFF
    assert rig.memory.peek(addrs[Level.PTE]) == make_leaf_entry(new_frame) | EPT_A | EPT_D


def test_cas_race_host_clears_accessed_no_resurrection():
    """Every entry has A, the leaf lacks D: a write CASes only the leaf.  The host
    clears the leaf's A (clear_reference) between the walk's read and that CAS:
    the CAS must fail, the walk restart, and the new walk set A|D by a CAS
    against the cleared value, never by replaying the stale one."""
    rig = Rig()
    eptp, addrs = build(rig)
    for lv in Level:
        rig.memory.write(addrs[lv], rig.memory.peek(addrs[lv]) | EPT_A)
    pte = addrs[Level.PTE]
    stale = rig.memory.peek(pte)
    state = race(rig, pte, lambda old: old & ~(EPT_A | EPT_D))
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert state["fired"] and t.retries == 1 and t.outcome is Outcome.OK
    assert rig.harness.dram.cases == 2 and rig.harness.dram.cas_failures == 1
    stores = rig.history._log[pte]
    cleared = stale & ~EPT_A
    assert [(old, new) for _, old, new in stores[-2:]] == [(stale, cleared), (cleared, stale | EPT_D)]
    assert rig.scoreboard.failed == 0 and rig.harness.dram.corruptions == []


def test_cas_race_lowered_permission_gives_violation():
    rig = Rig()
    eptp, addrs = build(rig)
    race(rig, addrs[Level.PDE], lambda old: old & ~EPT_W)    # write-protect above the leaf
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert t.retries >= 1 and t.outcome is Outcome.VIOLATION and t.qual == 0b101_010
    assert not rig.memory.peek(addrs[Level.PTE]) & EPT_D


# --- bus errors --------------------------------------------------------------------------

@pytest.mark.parametrize("level", list(Level), ids=lambda l: l.name)
def test_bus_error_on_read_at_each_level(level):
    rig = Rig()
    eptp, addrs = build(rig)
    rig.harness.dram.config.error_addrs = frozenset({addrs[level]})
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)     # HangError if it hangs
    assert t.outcome is Outcome.BUS_ERROR and t.cycles < BOUND
    assert rig.harness.dram.cases == 0                      # nothing written after an error
    rig.harness.dram.config.error_addrs = frozenset()
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)       # the unit recovered
    assert t.outcome is Outcome.OK


@pytest.mark.parametrize("level", list(Level), ids=lambda l: l.name)
def test_bus_error_on_ad_cas_at_each_level(level):
    rig = Rig()
    eptp, addrs = build(rig)
    for lv in Level:          # only ``level`` lacks A/D, so its CAS is the only one
        if lv is not level:
            rig.memory.write(addrs[lv], rig.memory.peek(addrs[lv]) | EPT_A | (EPT_D if lv is Level.PTE else 0))

    def arm(cycle):
        if any(r.op == "cas" for r in rig.harness.dram.queue):
            rig.harness.dram.config.error_addrs = frozenset({addrs[level]})
    rig.harness.hooks.append(arm)
    t = rig.translate(GPA, Access.WRITE, limit=BOUND)
    assert t.outcome is Outcome.BUS_ERROR
    assert not rig.memory.peek(addrs[level]) & EPT_A


def test_random_bus_errors_never_hang():
    rig = Rig(dram=DramConfig(error_probability=0.05, stall_probability=0.3, seed=7))
    ts, _ = random_table_set(rig.memory, 0x100_0000, 11, n_paths=8, ad=True)
    assert rig.load(ts.eptp)
    outcomes = set()
    for _ in range(6):
        for gpa in ts.gpas:
            for access in ACCESSES:
                t = rig.translate(gpa, access, limit=BOUND)    # scoreboard-checked
                outcomes.add(t.outcome)
    assert Outcome.BUS_ERROR in outcomes and len(outcomes) > 1
    assert rig.harness.dram.corruptions == []


# --- backpressure and handshakes ---------------------------------------------------------

def stream_monitor(harness, violations):
    """A protocol checker: a stream payload held back by ready=0 must stay valid
    and unchanged until taken (translate response and memory request)."""
    dut = harness.dut
    streams = {"translate_resp": dut.translate_resp, "mem_req": dut.mem_req}

    async def monitor(ctx):
        held = {}
        sigs = []
        for s in streams.values():
            sigs += [s.valid, s.ready, s.payload.as_value()]
        while True:
            _, _, *vals = await ctx.tick().sample(*sigs)
            for i, name in enumerate(streams):
                valid, ready, payload = vals[3 * i:3 * i + 3]
                if name in held and (not valid or payload != held[name]):
                    violations.append(f"{name}: dropped or changed while stalled")
                held.pop(name, None)
                if valid and not ready:
                    held[name] = payload
    harness.sim.add_process(monitor)


def test_backpressure_on_both_ports():
    rig = Rig(dram=DramConfig(stall_probability=0.5, max_outstanding=1, seed=3),
              resp_stall_probability=0.6, seed=5)
    violations = []
    stream_monitor(rig.harness, violations)
    ts, _ = random_table_set(rig.memory, 0x100_0000, 21, n_paths=8, ad=True)
    assert rig.load(ts.eptp)
    shadow = PhysicalMemory()
    for addr, value in ts.words.items():
        shadow.write(addr, value, source="init")
    for gpa in ts.gpas:
        for access in ACCESSES:
            check_against_model(rig, shadow, ts.eptp, gpa, access)
    assert rig.harness.dram.stall_cycles > 0
    assert violations == []


def test_requests_queue_behind_a_busy_walker():
    """Several requests offered at once: taken one at a time, answered in order."""
    rig = Rig(resp_stall_probability=0.3)
    eptp, addrs = build(rig)
    gpas = [GPA + i * 8 for i in range(5)]
    tickets = [rig.harness.submit(g, Access.READ) for g in gpas]
    rig.harness.run_until(lambda: all(t.done for t in tickets), 5 * BOUND, "five responses")
    assert [t.gpa for t in rig.harness.completed] == gpas
    assert all(a.answered < b.accepted or a.answered <= b.answered
               for a, b in zip(tickets, tickets[1:]))
    for t in tickets:
        assert rig.scoreboard.check(t)


# --- the EPTP ----------------------------------------------------------------------------

INVALID_EPTPS = {
    "memtype_1": 0x10_0000 | 1 | 3 << 3,
    "memtype_7": 0x10_0000 | 7 | 3 << 3,
    "walk_length_5": 0x10_0000 | 6 | 4 << 3,
    "walk_length_2": 0x10_0000 | 6 | 1 << 3,
    "reserved_bit_8": 0x10_0000 | 6 | 3 << 3 | 1 << 8,
    "reserved_bit_11": 0x10_0000 | 6 | 3 << 3 | 1 << 11,
    "above_maxphyaddr": 0x10_0000 | 6 | 3 << 3 | 1 << 46,
    "bit_63": 0x10_0000 | 6 | 3 << 3 | 1 << 63,
}


@pytest.mark.parametrize("name", list(INVALID_EPTPS))
def test_invalid_eptp_is_refused_and_never_walked(name):
    rig = Rig()
    eptp, addrs = build(rig)                         # a valid context first
    assert rig.translate(GPA, Access.READ, limit=BOUND).outcome is Outcome.OK
    reads = rig.harness.dram.reads
    value = INVALID_EPTPS[name]
    with pytest.raises(EptpError):
        Eptp.decode(value)
    assert rig.harness.load_eptp(value, None) is False
    assert rig.harness.eptp_error
    t = rig.harness.translate(GPA, Access.READ, limit=BOUND)
    assert t.refused and t.outcome is None
    assert rig.scoreboard.check(t)
    assert rig.harness.dram.reads == reads            # nothing walked
    assert rig.load(eptp) and not rig.harness.eptp_error


def test_no_eptp_loaded_is_refused():
    rig = Rig()
    t = rig.harness.translate(GPA, Access.READ, limit=BOUND)
    assert t.refused and rig.harness.dram.reads == 0


def test_rtl_backend_refuses_invalid_eptp_like_the_model():
    from sim.backends.pysim import PysimBackend as RtlBackend
    b = RtlBackend(PhysicalMemory(), EptConfig())
    with pytest.raises(EptpError):
        b.load_eptp(INVALID_EPTPS["memtype_7"])
    assert not b.harness.eptp_valid
    b.close()


def test_hang_bound_is_enforced():
    """The watchdog itself can fail: a DRAM that never answers trips it."""
    rig = Rig(dram=DramConfig(read_latency=10_000))
    build(rig)
    with pytest.raises(HangError):
        rig.harness.translate(GPA, Access.READ, limit=500)


# --- elaboration parameters --------------------------------------------------------------

@pytest.mark.parametrize("maxphyaddr", [39, 52])
def test_other_maxphyaddr(maxphyaddr):
    config = EptConfig(maxphyaddr=maxphyaddr)
    rig = Rig(config=config)
    eptp, addrs = build(rig)
    shadow = shadow_of(rig.memory)
    bit = 1 << (maxphyaddr - 1)                      # highest legal address bit
    rig.memory.write(addrs[Level.PTE], rig.memory.peek(addrs[Level.PTE]) | bit)
    shadow.write(addrs[Level.PTE], shadow.peek(addrs[Level.PTE]) | bit)
    got, _ = check_against_model(rig, shadow, eptp, GPA, Access.READ)
    assert got.outcome is Outcome.OK and got.hpa & bit
    if maxphyaddr < 52:
        rig.memory.write(addrs[Level.PTE], rig.memory.peek(addrs[Level.PTE]) | bit << 1)
        rig.harness.invept("global")          # the TLB may keep the old entry until then
        assert rig.translate(GPA, Access.READ, limit=BOUND).outcome is Outcome.MISCONFIG


def test_bad_parameters_are_refused():
    from hw.top import PageWalkUnit
    with pytest.raises(ValueError, match="maxphyaddr"):
        PageWalkUnit(maxphyaddr=60)
    with pytest.raises(ValueError, match="execute_only"):
        PageWalkUnit(execute_only="yes")


@pytest.mark.parametrize("latency", [1, 5, 20])
def test_cold_walk_timing_is_as_documented(latency):
    """top.py promises 4(L+1)+2 cycles for a cold 4-level walk (no A/D writes,
    no row misses): one cycle of TLB lookup, then the walker's 4(L+1)+1;
    measured from the port handshakes of the RTL."""
    rig = Rig(dram=DramConfig(read_latency=latency, row_miss_penalty=0))
    build(rig, ad=False)
    t = rig.translate(GPA, Access.READ, limit=BOUND)
    assert t.outcome is Outcome.OK and t.cycles == 4 * (latency + 1) + 2
    # a row miss costs its penalty on every level it hits
    rig2 = Rig(dram=DramConfig(read_latency=latency, row_miss_penalty=3, banks=1))
    build(rig2, ad=False)
    t2 = rig2.translate(GPA, Access.READ, limit=BOUND)
    assert t2.cycles == t.cycles + 3 * rig2.harness.dram.row_misses
