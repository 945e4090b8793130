"""hw.nested_top.NestedWalkUnit against kvm-unit-tests' EPT access tests (the reference's
§11): the paging-structure ("paddr") cases of §11.3, the final-GPA cases of §11.4 and
stages 0, 3 and 4 of the "EPT A/D disabled/enabled" tests of §11.5.

Each RTL answer is compared twice: with the expectation written out here from the
reference's tables (the qualification with bits 9-11 masked, as kvm's
``do_ept_violation`` does, and the GPA), and in full with the golden model
(``model.nested.translate_la``) on an identical world; the whole memory (guest and
EPT A/D) is compared with the model's world after every case.

The cases of one group run back to back in one simulation: before each, the DRAM is
pointed at a fresh world, the context loaded and every EPT context invalidated (INVEPT
all), so each starts cold."""

import pytest
from nested_util import (
    LEVELS, NestedBench, World, clone_memory, compare_la, model_la,
)

from hw.layouts import InveptKind, LinearOutcome
from model.formats import (
    EPT_A, EPT_D, EPT_R, EPT_RWX, EPT_W, EPT_X, Access, Level, make_leaf_entry as ept_leaf,
)
from model.guest import PG_A, PG_D, la_index

RD, WR, FETCH = 1 << 0, 1 << 1, 1 << 2
PERM_RD, PERM_WR, PERM_EX = 1 << 3, 1 << 4, 1 << 5
LADDR_VLD, PADDR = 1 << 7, 1 << 8
GUEST_MASK = 0xE00                      # qual bits 9-11: kvm masks them (EPT_VLT_GUEST_MASK)

KVM_LA = 0x0000_1234_5600_0ABC          # PTE index 0: the PTE at offset 0 of its page, as in K1
KVM_DATA_GPA = 1 << 39                  # K1's data GPA: an EPT PML4E of its own
LATENCY = 1

# kvm's ops: (access, CPL 3)
OPS = {"READ": (Access.READ, False), "WRITE": (Access.WRITE, False),
       "EXEC": (Access.FETCH, False), "EXEC_USER": (Access.FETCH, True)}
ALL_OPS = tuple(OPS)
PERMS = {"---": 0, "R--": EPT_R, "RW-": EPT_R | EPT_W, "RWX": EPT_RWX, "R-X": EPT_R | EPT_X,
         "--X": EPT_X, "-W-": EPT_W, "-WX": EPT_W | EPT_X}
AD_PRESETS = {"0": 0, "A": PG_A, "AD": PG_A | PG_D}

assert la_index(KVM_LA, Level.PTE) == 0


# -- §11.3: the paddr tests, as the reference's table lists them -------------------------------
# (kvm test, EPTP[6], EPT perms on the guest PT page, guest PTE A/D presets, ops, expected qual
# with LADDR_VLD, None = allowed)

PADDR_TABLE = [
    ("paddr_not_present_ad_disabled", 0, "---", ("AD",), ALL_OPS, RD | LADDR_VLD),
    ("paddr_not_present_ad_enabled", 1, "---", ("AD",), ALL_OPS, RD | WR | LADDR_VLD),
    ("paddr_read_only_ad_disabled", 0, "R--", ("0",), ALL_OPS, RD | WR | PERM_RD | LADDR_VLD),
    ("paddr_read_only_ad_disabled", 0, "R--", ("A",), ("READ",), None),
    ("paddr_read_only_ad_disabled", 0, "R--", ("A",), ("WRITE",), RD | WR | PERM_RD | LADDR_VLD),
    ("paddr_read_only_ad_disabled", 0, "R--", ("A",), ("EXEC", "EXEC_USER"), None),
    ("paddr_read_only_ad_disabled", 0, "R--", ("AD",), ALL_OPS, None),
    ("paddr_read_only_ad_enabled", 1, "R--", ("0", "A", "AD"), ALL_OPS, RD | WR | PERM_RD | LADDR_VLD),
    ("paddr_read_write", 0, "RW-", ("0",), ALL_OPS, None),
    ("paddr_read_write_execute", 0, "RWX", ("0",), ALL_OPS, None),
    ("paddr_read_execute_ad_disabled", 0, "R-X", ("0",), ALL_OPS,
     RD | WR | PERM_RD | PERM_EX | LADDR_VLD),
    ("paddr_read_execute_ad_disabled", 0, "R-X", ("A",), ("READ", "EXEC", "EXEC_USER"), None),
    ("paddr_read_execute_ad_disabled", 0, "R-X", ("A",), ("WRITE",),
     RD | WR | PERM_RD | PERM_EX | LADDR_VLD),
    ("paddr_read_execute_ad_disabled", 0, "R-X", ("AD",), ALL_OPS, None),
    ("paddr_read_execute_ad_enabled", 1, "R-X", ("0", "A", "AD"), ALL_OPS,
     RD | WR | PERM_RD | PERM_EX | LADDR_VLD),
    # the rest of the cross product (each paddr test x each preset x each op x EPTP[6] on and
    # off): not in kvm's list, the same rules — a not-present page faults whatever the preset
    # (RD, and WR with EPTP[6] = 1); a writable page never faults
    ("not_present, other presets", 0, "---", ("0", "A"), ALL_OPS, RD | LADDR_VLD),
    ("not_present, other presets", 1, "---", ("0", "A"), ALL_OPS, RD | WR | LADDR_VLD),
    ("read_write, other presets", 0, "RW-", ("A", "AD"), ALL_OPS, None),
    ("read_write_execute, other presets", 0, "RWX", ("A", "AD"), ALL_OPS, None),
    ("read_write, EPTP[6] = 1", 1, "RW-", ("0", "A", "AD"), ALL_OPS, None),
    ("read_write_execute, EPTP[6] = 1", 1, "RWX", ("0", "A", "AD"), ALL_OPS, None),
]

KVM_ROWS = 15                           # PADDR_TABLE[:15] are kvm's; the rest: slow
PADDR_CASES = {}      # (ad, perms, preset, op) -> (kvm test, expected qual or None, kvm's row)
for _row, (_test, _ad, _perms, _presets, _ops, _qual) in enumerate(PADDR_TABLE):
    for _preset in _presets:
        for _op in _ops:
            _key = (_ad, _perms, _preset, _op)
            assert _key not in PADDR_CASES, _key
            PADDR_CASES[_key] = (_test, _qual, _row < KVM_ROWS)
assert len(PADDR_CASES) == 2 * 5 * 3 * 4          # the whole cross product, once each
assert sum(k for *_, k in PADDR_CASES.values()) == 64


def paddr_world(ad, perms, preset):
    """K1's ept_access_paddr setup: a 4K guest page at KVM_LA (user, writable), upper guest
    entries accessed, the leaf PTE's A/D = ``preset``, and the EPT PTE mapping the guest
    PT page set to exactly ``perms`` (its upper EPT levels RWX)."""
    w = World(ad=ad)
    w.guest_map(KVM_LA, KVM_DATA_GPA, table_accessed=True, accessed=bool(preset & PG_A),
                dirty=bool(preset & PG_D))
    pte_gpa = w.guest_entry_gpa(KVM_LA, Level.PTE)
    w.set_ept(pte_gpa, Level.PTE, ept_leaf(w.hpa_of(pte_gpa & ~0xFFF), Level.PTE, perms))
    return w, pte_gpa


def restore_pt_page(w, pte_gpa):
    """K1 restores the EPT entry (RWX) after a violation and retries the op."""
    w.set_ept(pte_gpa, Level.PTE, ept_leaf(w.hpa_of(pte_gpa & ~0xFFF), Level.PTE, EPT_RWX))


_paddr_results = {}


def paddr_group(kvm_rows):
    """Run every case of kvm's rows (or of the others) in one simulation (cached):
    {(ad, perms, preset, op): (first answer, the memory then, the retry's answer)}."""
    if kvm_rows in _paddr_results:
        return _paddr_results[kvm_rows]
    cases = [k for k, (_, _, kvm) in PADDR_CASES.items() if kvm == kvm_rows]
    worlds = {c: paddr_world(c[0], PERMS[c[1]], AD_PRESETS[c[2]]) for c in cases}
    bench = NestedBench(worlds[cases[0]][0], latency=LATENCY)
    out = {}

    async def tb(ctx):
        for case in cases:
            w, pte_gpa = worlds[case]
            access, user = OPS[case[3]]
            await bench.fresh(ctx, w)
            first, _ = await bench.linear(ctx, KVM_LA, access, user, tag=case_tag(case[2:]))
            before_retry = clone_memory(w.mem)
            retry = None
            if first.outcome == LinearOutcome.VIOLATION:
                await bench.idle(ctx)
                restore_pt_page(w, pte_gpa)
                await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
                retry, _ = await bench.linear(ctx, KVM_LA, access, user, tag=case_tag(case[2:]))
            out[case] = (first, before_retry, retry, w)

    bench.run(tb)
    _paddr_results[kvm_rows] = out
    return out


def case_tag(case):
    return list(AD_PRESETS).index(case[0]) * 4 + ALL_OPS.index(case[1])      # 0..11


@pytest.mark.parametrize("ad,perms,preset,op", [
    pytest.param(*k, id=f"{v[0].split(',')[0]}-eptp6={k[0]}-{k[1]}-pte_{k[2]}-{k[3]}",
                 marks=() if v[2] else pytest.mark.slow) for k, v in PADDR_CASES.items()])
def test_paddr(ad, perms, preset, op):
    kvm_test, expected, kvm_row = PADDR_CASES[(ad, perms, preset, op)]
    first, before_retry, retry, w_rtl = paddr_group(kvm_row)[(ad, perms, preset, op)]
    access, user = OPS[op]
    tag = case_tag((preset, op))
    w_ref, pte_gpa = paddr_world(ad, PERMS[perms], AD_PRESETS[preset])
    ref = model_la(w_ref, KVM_LA, access, user)

    # the reference's table
    if expected is None:
        assert first.outcome == LinearOutcome.OK, (kvm_test, first)
        assert first.gpa == KVM_DATA_GPA | (KVM_LA & 0xFFF)
    else:
        assert first.outcome == LinearOutcome.VIOLATION, (kvm_test, first)
        assert first.qual & ~GUEST_MASK == expected, (kvm_test, hex(first.qual), hex(expected))
        assert first.gpa == pte_gpa
        assert not first.qual & PADDR and not first.qual & FETCH
    # the golden model, in full (qual bits 9-11 included), and the memory after it
    compare_la(first, ref, tag)
    assert dict(before_retry.nonzero_words()) == dict(w_ref.mem.nonzero_words())

    # the guest PTE's A/D after the op (K1: A always, D if preset or a write), and with
    # EPTP[6] = 1 the EPT entries mapping the guest PT page: A at every level, D on the leaf
    # only; read from the RTL's memory (equal to the model's throughout)
    pte_hpa = w_ref.hpa_of(pte_gpa)
    if expected is not None:
        assert before_retry.peek(pte_hpa) & (PG_A | PG_D) == AD_PRESETS[preset], "a faulting op set A/D"
        restore_pt_page(w_ref, pte_gpa)
        ref2 = model_la(w_ref, KVM_LA, access, user)
        assert retry is not None and retry.outcome == LinearOutcome.OK
        compare_la(retry, ref2, tag)
    else:
        assert retry is None
    assert dict(w_rtl.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    pte = w_rtl.mem.peek(pte_hpa)
    want_d = bool(AD_PRESETS[preset] & PG_D) or access is Access.WRITE
    assert pte & PG_A and bool(pte & PG_D) == want_d, hex(pte)
    if ad and expected is None:
        for lv in LEVELS:
            e = w_rtl.mem.peek(w_ref.ept_entry_addr(pte_gpa, lv, create=False))
            assert e & EPT_A, lv
            assert bool(e & EPT_D) == (lv == Level.PTE), lv


# -- §11.4: the final-GPA cases ----------------------------------------------------------------
# ept_access_violation(access, op, q) expects q | LADDR_VLD | PADDR; "misconfig" = exit 49 at
# every level; None = allowed.  The GPA is the data GPA (the LA's page offset included).

FINAL_TABLE = {
    "---": {"READ": RD, "WRITE": WR, "EXEC": FETCH, "EXEC_USER": FETCH},
    "R--": {"READ": None, "WRITE": WR | PERM_RD, "EXEC": FETCH | PERM_RD, "EXEC_USER": FETCH | PERM_RD},
    "RW-": {"READ": None, "WRITE": None, "EXEC": FETCH | PERM_RD | PERM_WR,
            "EXEC_USER": FETCH | PERM_RD | PERM_WR},
    "--X": {"READ": RD | PERM_EX, "WRITE": WR | PERM_EX, "EXEC": None, "EXEC_USER": None},
    "R-X": {"READ": None, "WRITE": WR | PERM_RD | PERM_EX, "EXEC": None, "EXEC_USER": None},
    "RWX": {op: None for op in ALL_OPS},
    "-W-": {op: "misconfig" for op in ALL_OPS},
    "-WX": {op: "misconfig" for op in ALL_OPS},
}
# where the restricted EPT entry sits: a level of a 4K mapping (1 = the PTE .. 4 = the PML4E),
# or a 2M / 1G leaf
PLACEMENTS = {"L1": (Level.PTE, Level.PTE), "L2": (Level.PDE, Level.PTE), "L3": (Level.PDPTE, Level.PTE),
              "L4": (Level.PML4E, Level.PTE), "2M": (Level.PDE, Level.PDE),
              "1G": (Level.PDPTE, Level.PDPTE)}
FINAL_CASES = [(pl, perms, op) for pl in PLACEMENTS for perms in FINAL_TABLE for op in ALL_OPS]
# the default set (EPTP[6] = 0, as in K1): every (perms, op) once, the placements taken in turn
# (each placement 5 or 6 times); the whole cross product, EPTP[6] on and off: slow
FAST_FINAL = [(list(PLACEMENTS)[k % len(PLACEMENTS)], perms, op)
              for k, (perms, op) in enumerate((p, o) for p in FINAL_TABLE for o in ALL_OPS)]
FAST_FINAL.append(("2M", "R--", "WRITE"))        # K1 ept_access_test_force_2m_page


def final_world(ad, placement, perms):
    restrict, leaf = PLACEMENTS[placement]
    w = World(ad=ad)
    w.guest_map(KVM_LA, KVM_DATA_GPA, table_accessed=True, ept=False)
    w.ept_map(KVM_DATA_GPA, level=leaf)
    addr = w.ept_entry_addr(KVM_DATA_GPA, restrict, create=False)
    w.mem.write(addr, w.mem.peek(addr) & ~EPT_RWX | perms)
    return w


_final_results = {}


def final_group(ad, fast):
    """Run the default set's cases (``fast``) or the whole cross product at EPTP[6] =
    ``ad`` in one simulation (cached)."""
    key = (ad, fast)
    if key not in _final_results:
        cases = FAST_FINAL if fast else FINAL_CASES
        worlds = {c: final_world(ad, c[0], PERMS[c[1]]) for c in cases}
        bench = NestedBench(worlds[cases[0]], latency=LATENCY)
        out = {}

        async def tb(ctx):
            for case in cases:
                _, perms, op = case
                w = worlds[case]
                access, user = OPS[op]
                await bench.fresh(ctx, w)
                la = KVM_LA + (8 if access is Access.FETCH else 0)     # K1: the code at gva[1]
                out[case] = (await bench.linear(ctx, la, access, user, tag=1))[0], w

        bench.run(tb)
        _final_results[key] = out
    return _final_results[key]


def _final_ids(cases):
    return [f"{pl}-{perms}-{op}" for pl, perms, op in cases]


def _check_final(ad, placement, perms, op, fast):
    resp, w = final_group(ad, fast)[(placement, perms, op)]
    access, user = OPS[op]
    la = KVM_LA + (8 if access is Access.FETCH else 0)
    gpa = KVM_DATA_GPA | (la & 0xFFF)
    expected = FINAL_TABLE[perms][op]
    if expected is None:
        assert resp.outcome == LinearOutcome.OK, resp
        assert resp.gpa == gpa
    elif expected == "misconfig":
        assert resp.outcome == LinearOutcome.MISCONFIG, resp
        assert resp.gpa == gpa
    else:
        assert resp.outcome == LinearOutcome.VIOLATION, resp
        assert resp.qual & ~GUEST_MASK == expected | LADDR_VLD | PADDR, (hex(resp.qual), hex(expected))
        assert resp.gpa == gpa
        # bits 9-11: the guest page is user, writable, executable
        assert resp.qual & GUEST_MASK == 0x600
    w_ref = final_world(ad, placement, PERMS[perms])
    compare_la(resp, model_la(w_ref, la, access, user), tag=1)
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())


@pytest.mark.parametrize("placement,perms,op", FAST_FINAL, ids=_final_ids(FAST_FINAL))
def test_final_gpa(placement, perms, op):
    _check_final(0, placement, perms, op, fast=True)


@pytest.mark.slow
@pytest.mark.parametrize("ad", [0, 1])
@pytest.mark.parametrize("placement,perms,op", FINAL_CASES, ids=_final_ids(FINAL_CASES))
def test_final_gpa_every_level(placement, perms, op, ad):
    _check_final(ad, placement, perms, op, fast=False)


def test_force_2m_page_write_to_read_only():
    """K1 ept_access_test_force_2m_page: a write to an R-only 2M EPT leaf."""
    _check_final(0, "2M", "R--", "WRITE", fast=True)
    resp, _ = final_group(0, True)[("2M", "R--", "WRITE")]
    assert resp.qual & ~GUEST_MASK == WR | PERM_RD | LADDR_VLD | PADDR


# -- §11.5: the "EPT A/D disabled/enabled" stages ----------------------------------------------

PAGE1, PAGE2 = 0x0000_0000_4000_0000, 0x0000_0000_4000_1000        # data_page1, data_page2 (LAs)
PD_GPA = 0x0060_0000       # the guest page-directory page, under an EPT PDE of its own


def eptad_world(ad):
    w = World(ad=ad)
    for la, gpa in ((PAGE1, 0x8000_0000), (PAGE2, 0x8000_1000)):
        w.guest_map(la, gpa, table_gpas={Level.PDE: PD_GPA})
    return w


@pytest.mark.parametrize("ad", [False, True], ids=["ad_disabled", "ad_enabled"])
def test_eptad_stages_0_3_4(ad):
    w = eptad_world(ad)
    w_ref = eptad_world(ad)
    pd_gpa = w.guest_entry_gpa(PAGE1, Level.PDE)
    assert pd_gpa & ~0xFFF == PD_GPA
    guest_tables = sorted({w.guest_entry_gpa(PAGE1, lv) & ~0xFFF for lv in LEVELS})
    assert len(guest_tables) == 4 and PD_GPA in guest_tables
    leaf_addr = {gpa: w.ept_leaf_addr(gpa) for gpa in guest_tables + [0x8000_0000, 0x8000_1000]}
    bench = NestedBench(w, latency=LATENCY)
    out = {}

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        # stage 0: read data_page1 and data_page2, write data_page2
        out[0] = [(await bench.linear(ctx, la, acc, False, tag=k))[0]
                  for k, (la, acc) in enumerate([(PAGE1, Access.READ), (PAGE2, Access.READ),
                                                 (PAGE2, Access.WRITE)])]
        await bench.idle(ctx)
        out["mem0"] = clone_memory(w.mem)
        # stage 3: data_page1's EPT leaf not present, the guest writes it
        w.set_ept(0x8000_0000, Level.PTE, 0)
        await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
        out[3] = (await bench.linear(ctx, PAGE1, Access.WRITE, False, tag=4))[0]
        await bench.idle(ctx)
        out["mem3"] = clone_memory(w.mem)
        # stage 4: the EPT PDE covering the guest page-directory page not present, a write
        w.ept_map(0x8000_0000)
        w.set_ept(PD_GPA, Level.PDE, 0)
        await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
        out[4] = (await bench.linear(ctx, PAGE2, Access.WRITE, False, tag=5))[0]

    bench.run(tb)

    # the model, stage by stage, on the other world
    refs0 = [model_la(w_ref, la, acc) for la, acc in [(PAGE1, Access.READ), (PAGE2, Access.READ),
                                                      (PAGE2, Access.WRITE)]]
    for k, (resp, ref) in enumerate(zip(out[0], refs0, strict=True)):
        assert resp.outcome == LinearOutcome.OK
        compare_la(resp, ref, k)
    assert dict(out["mem0"].nonzero_words()) == dict(w_ref.mem.nonzero_words())
    m0 = out["mem0"]
    for gpa in guest_tables:        # the EPT leaves mapping the guest's table pages
        leaf = m0.peek(leaf_addr[gpa])
        assert leaf & (EPT_A | EPT_D) == ((EPT_A | EPT_D) if ad else 0), hex(gpa)
    assert m0.peek(leaf_addr[0x8000_0000]) & (EPT_A | EPT_D) == (EPT_A if ad else 0)
    assert m0.peek(leaf_addr[0x8000_1000]) & (EPT_A | EPT_D) == ((EPT_A | EPT_D) if ad else 0)

    w_ref.set_ept(0x8000_0000, Level.PTE, 0)
    ref3 = model_la(w_ref, PAGE1, Access.WRITE)
    r3 = out[3]
    assert r3.outcome == LinearOutcome.VIOLATION
    assert r3.qual & ~GUEST_MASK == WR | LADDR_VLD | PADDR == 0x182
    assert r3.gpa == 0x8000_0000
    compare_la(r3, ref3, 4)
    assert dict(out["mem3"].nonzero_words()) == dict(w_ref.mem.nonzero_words())

    w_ref.ept_map(0x8000_0000)
    w_ref.set_ept(PD_GPA, Level.PDE, 0)
    ref4 = model_la(w_ref, PAGE2, Access.WRITE)
    r4 = out[4]
    assert r4.outcome == LinearOutcome.VIOLATION
    assert r4.qual & ~GUEST_MASK == (0x83 if ad else 0x81)
    assert r4.qual & (PERM_RD | PERM_WR | PERM_EX) == 0      # the walk stopped at the EPT PDE
    assert r4.gpa == pd_gpa
    compare_la(r4, ref4, 5)
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())


# -- guest and EPT A/D in DRAM after reads and writes ----------------------------------------------

AD_LAS = {"4k": 0x0000_0000_4000_0000, "2m": 0x0000_0000_8020_0000, "1g": 0x0000_0080_4000_0000}
AD_GPAS = {"4k": 0x1_0000_0000, "2m": 0x1_0020_0000, "1g": 0x1_4000_0000}     # LA offset 0 in each


def ad_world(ad):
    w = World(ad=ad)
    w.guest_map(AD_LAS["4k"], AD_GPAS["4k"])
    w.guest_map(AD_LAS["2m"], AD_GPAS["2m"], Level.PDE)
    w.guest_map(AD_LAS["1g"], AD_GPAS["1g"], Level.PDPTE)
    return w


AD_SEQUENCE = [("4k", Access.READ), ("2m", Access.READ), ("4k", Access.WRITE), ("1g", Access.FETCH),
               ("1g", Access.WRITE), ("2m", Access.WRITE), ("4k", Access.READ)]


@pytest.mark.parametrize("ad", [False, True], ids=["eptp6=0", "eptp6=1"])
def test_guest_and_ept_a_d_after_each_read_and_write(ad):
    """After every access of a read/write/fetch sequence over 4K, 2M and 1G guest pages, the
    whole memory equals the model's: guest A top down and D on written leaves; with
    EPTP[6] = 1 EPT A on every entry used, D on the leaves of the guest table pages and of
    the written data pages, none with EPTP[6] = 0."""
    w, w_ref = ad_world(ad), ad_world(ad)
    bench = NestedBench(w, latency=LATENCY)
    snaps = []

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        for k, (page, access) in enumerate(AD_SEQUENCE):
            resp, _ = await bench.linear(ctx, AD_LAS[page], access, False, tag=k)
            await bench.idle(ctx)
            snaps.append((resp, clone_memory(w.mem)))

    bench.run(tb)
    written = set()
    for k, ((page, access), (resp, mem)) in enumerate(zip(AD_SEQUENCE, snaps, strict=True)):
        ref = model_la(w_ref, AD_LAS[page], access)
        assert resp.outcome == LinearOutcome.OK
        compare_la(resp, ref, k)
        assert dict(mem.nonzero_words()) == dict(w_ref.mem.nonzero_words()), (k, page, access)
        if access is Access.WRITE:
            written.add(page)
        for p, la in AD_LAS.items():
            leaf_level = {"4k": Level.PTE, "2m": Level.PDE, "1g": Level.PDPTE}[p]
            leaf = mem.peek(w.hpa_of(w.guest_entry_gpa(la, leaf_level)))
            touched = p in {q for q, _ in AD_SEQUENCE[:k + 1]}
            assert bool(leaf & PG_A) == touched and bool(leaf & PG_D) == (p in written), (k, p)
            if touched:
                data = mem.peek(w.ept_leaf_addr(AD_GPAS[p]))      # the data page's EPT leaf
                want = (EPT_A | (EPT_D if p in written else 0)) if ad else 0
                assert data & (EPT_A | EPT_D) == want, (k, p, hex(data))


# -- CR0.PG = 0: the LA is the GPA (§4.3's last row; §11.5 stages 5-6: EPT not present) -----------

PG0_CASES = [  # (GPA, EPT perms or None = not mapped, op, expected qual without bits 9-11, or None)
    (0x1234_5000, None, "READ", RD | LADDR_VLD | PADDR),
    (0x1234_5008, None, "WRITE", WR | LADDR_VLD | PADDR),
    (0x1234_5010, None, "EXEC", FETCH | LADDR_VLD | PADDR),
    (0x2000_0100, "R--", "WRITE", WR | PERM_RD | LADDR_VLD | PADDR),
    (0x2000_0100, "R--", "READ", None),
    (0x3000_0200, "--X", "EXEC_USER", None),
    (0x3000_0200, "--X", "READ", RD | PERM_EX | LADDR_VLD | PADDR),
]


@pytest.mark.parametrize("ad", [False, True], ids=["eptp6=0", "eptp6=1"])
def test_paging_off_accesses(ad):
    def world():
        w = World(ad=ad, paging=False)
        for gpa, perms, _, _ in PG0_CASES:
            if perms is not None:
                w.ept_map(gpa, perms=PERMS[perms])
        return w
    w, w_ref = world(), world()
    bench = NestedBench(w, latency=LATENCY)
    got = []

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        for k, (gpa, _, op, _) in enumerate(PG0_CASES):
            access, user = OPS[op]
            got.append((await bench.linear(ctx, gpa, access, user, tag=k))[0])

    bench.run(tb)
    for k, ((gpa, _, op, expected), resp) in enumerate(zip(PG0_CASES, got, strict=True)):
        access, user = OPS[op]
        ref = model_la(w_ref, gpa, access, user)
        if expected is None:
            assert resp.outcome == LinearOutcome.OK and resp.gpa == gpa
        else:
            assert resp.outcome == LinearOutcome.VIOLATION and resp.gpa == gpa
            assert resp.qual & ~GUEST_MASK == expected, (k, hex(resp.qual))
            assert resp.qual & GUEST_MASK == 0x600          # CR0.PG = 0: user, writable, executable
        compare_la(resp, ref, k)
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
