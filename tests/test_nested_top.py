"""hw.nested_top.NestedWalkUnit in pysim: the guest walker over the real EPT unit, one
DRAM (``PhysicalMemory``, in order, latency L) on the shared memory port; every linear
answer compared with ``model.nested.translate_la`` and every GPA answer with
``model.walk.translate``, on an identical world built twice, and the whole memory
(guest A/D, EPT A/D) compared at the end.  No table changes between requests, so
the EPT unit's TLB never holds a stale translation."""

import pytest
from conftest import Memory, receive, run, send
from nested_util import LEVELS, World, compare_la

from hw.layouts import Access as HAccess
from hw.layouts import LinearOutcome, MemOp
from hw.layouts import Outcome as HOutcome
from hw.nested_top import NestedWalkUnit, guest_tag
from model.formats import EPT_R, Access, Level
from model.guest import PG_A, PG_D
from model.nested import translate_la
from model.walk import translate

LA = 0x0000_1234_5678_9ABC
DATA_GPA = 0x4000_0000            # 1G-aligned: fits every guest page size
LATENCY = 4


class Dram(Memory):
    """conftest's Memory over a PhysicalMemory."""

    def __init__(self, mem_req, mem_resp, phys, latency):
        super().__init__(mem_req, mem_resp, latency=latency)
        self.phys = phys

    def _perform(self, op, addr, compare, data):
        if op == MemOp.READ:
            return self.phys.read(addr), 0
        _, old = self.phys.cas(addr, compare, data, source="walker")
        return old, 0


def la_req(la, access=Access.READ, user=False, tag=3):
    return {"la": la & ((1 << 48) - 1), "access": HAccess(int(access)), "user": user, "tag": tag}


def run_nested(world, linear, gpa=(), *, cr3=None, latency=LATENCY, gpa_delay=0):
    """Load the EPTP and CR3, send the ``linear`` requests one after the other and
    (concurrently, ``gpa_delay`` cycles after the first linear request) the ``gpa``
    ones ((gpa, access, tag)) on the EPT port.  Returns (linear answers as
    (payload, cycles), GPA answers by tag, dram, dut)."""
    dut = NestedWalkUnit(maxphyaddr=world.config.maxphyaddr, checks=True)
    dram = Dram(dut.mem_req, dut.mem_resp, world.mem, latency)
    out = {"linear": [], "gpa": {}, "started": False}

    async def setup(ctx):
        ctx.set(dut.eptp_value, world.eptp.encode())
        ctx.set(dut.eptp_load, 1)
        ctx.set(dut.cr3_value, (world.regs.cr3 if cr3 is None else cr3) >> 12 & ((1 << 40) - 1))
        ctx.set(dut.cr3_load, 1)
        ctx.set(dut.vpid_value, world.regs.vpid)
        ctx.set(dut.vpid_load, 1)
        ctx.set(dut.paging, world.regs.paging)
        ctx.set(dut.wp, world.regs.wp)
        ctx.set(dut.nxe, world.regs.nxe)
        await ctx.tick()
        ctx.set(dut.eptp_load, 0)
        ctx.set(dut.cr3_load, 0)
        ctx.set(dut.vpid_load, 0)
        await ctx.tick()
        out["cr3"] = (ctx.get(dut.cr3_valid), ctx.get(dut.cr3_error), ctx.get(dut.eptp_valid))

    async def tb_linear(ctx):
        await setup(ctx)
        out["started"] = True
        for req in linear:
            waited = await send(ctx, dut.linear_req, req, timeout=3000)
            resp, r = await receive(ctx, dut.linear_resp, timeout=3000)
            out["linear"].append((resp, waited + r + 1))

    async def tb_gpa(ctx):
        while not out["started"]:
            await ctx.tick()
        for _ in range(gpa_delay):
            await ctx.tick()
        for g, access, tag in gpa:
            await send(ctx, dut.translate_req, {"gpa": g, "access": HAccess(int(access)), "tag": tag})

    async def tb_gpa_resp(ctx):
        # taken as they come: an answer left waiting on the GPA port would hold up
        # the unit's response port, the guest walker's answers with it
        while len(out["gpa"]) < len(gpa):
            resp, _ = await receive(ctx, dut.translate_resp, timeout=3000)
            out["gpa"][resp.tag] = resp
        out["linear_done_before_gpa"] = len(out["linear"])

    tbs = [tb_linear] + ([tb_gpa, tb_gpa_resp] if gpa else [])
    run(dut, *tbs, processes=[dram.process], deadline_cycles=20_000)
    return out, dram, dut


def check(build, requests, *, gpa=(), gpa_delay=0, **world_args):
    """Build the world twice; the RTL on one, the golden model (in the same order) on the
    other; compare every answer and the whole memory.  ``requests``: (la, access, user)."""
    w_rtl, w_ref = World(**world_args), World(**world_args)
    build(w_rtl)
    build(w_ref)
    reqs = [la_req(la, access, user, tag=k % 8) for k, (la, access, user) in enumerate(requests)]
    out, dram, _ = run_nested(w_rtl, reqs, gpa, gpa_delay=gpa_delay)
    assert out["cr3"] == (1, 0, 1)
    refs = [translate_la(w_ref.mem, w_ref.eptp, w_ref.regs, la, access, user, w_ref.config)
            for la, access, user in requests]
    for k, ((resp, _), ref) in enumerate(zip(out["linear"], refs, strict=True)):
        compare_la(resp, ref, tag=k % 8)
    for g, access, tag in gpa:
        t = translate(w_ref.mem, w_ref.eptp, g, access, w_ref.config)
        resp = out["gpa"][tag]
        assert resp.outcome.name.lower() == t.outcome.value, (resp, t)
        if t.outcome.value == "ok":
            assert resp.hpa == t.hpa
    assert dict(w_rtl.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    return out, refs, w_rtl, dram


def mapped(level=Level.PTE, la=LA, gpa=DATA_GPA, **kw):
    def build(w):
        w.guest_map(la, gpa, level, **kw)
    return build


# -- successful walks -----------------------------------------------------------------------

@pytest.mark.parametrize("level", [Level.PTE, Level.PDE, Level.PDPTE])
def test_4k_2m_1g_guest_pages(level):
    out, refs, *_ = check(mapped(level), [(LA, Access.READ, False), (LA, Access.FETCH, True)])
    assert [r.outcome for r, _ in out["linear"]] == [LinearOutcome.OK] * 2
    assert refs[0].page_size == level.page_size


def test_cold_4k_over_4k_walk_cycles():
    """The figure for the report: a cold 2D walk (20 EPT-unit lookups: 4 guest levels
    and the final GPA, each a cold 4-level EPT walk but for the caches it fills),
    then the same access again (every EPT translation a TLB hit)."""
    out, *_ = check(mapped(), [(LA, Access.READ, False), (LA, Access.READ, False)])
    (r0, cold), (r1, warm) = out["linear"]
    assert r0.outcome == r1.outcome == LinearOutcome.OK
    print(f"cold 4K-over-4K: {cold} cycles, warm: {warm} cycles, L = {LATENCY}")
    assert warm < cold
    # warm: per guest level an EPT TLB hit (arbiter + 1) and a memory round trip, and the final GPA
    assert warm <= 4 * (LATENCY + 6) + 8


# -- exits ------------------------------------------------------------------------------------

def test_guest_page_fault():
    def build(w):
        w.guest_map(LA, DATA_GPA)
        w.gwrite(w.guest_entry_gpa(LA, Level.PDE), 0)
    out, *_ = check(build, [(LA, Access.WRITE, True)])
    assert out["linear"][0][0].outcome == LinearOutcome.PAGE_FAULT


def test_paging_structure_ept_violation():
    def build(w):
        w.guest_map(LA, DATA_GPA)
        pt = w.guest_entry_gpa(LA, Level.PTE) & ~0xFFF       # the guest PT page, EPT-unmapped
        w.set_ept(pt, Level.PTE, 0)
    out, refs, *_ = check(build, [(LA, Access.READ, False)])
    resp = out["linear"][0][0]
    assert resp.outcome == LinearOutcome.VIOLATION and not resp.qual & 0x100


def test_final_access_violation():
    out, *_ = check(mapped(ept_perms=EPT_R), [(LA, Access.WRITE, False)])
    resp = out["linear"][0][0]
    assert resp.outcome == LinearOutcome.VIOLATION and resp.qual & 0x100


@pytest.mark.parametrize("ad", [False, True])
def test_a_d_in_dram_after_a_write(ad):
    out, _, w, dram = check(mapped(), [(LA, Access.READ, False), (LA, Access.WRITE, False)], ad=ad)
    assert [r.outcome for r, _ in out["linear"]] == [LinearOutcome.OK] * 2
    assert w.gread(w.guest_entry_gpa(LA, Level.PTE)) & (PG_A | PG_D) == PG_A | PG_D
    for lv in LEVELS[:-1]:
        assert w.gread(w.guest_entry_gpa(LA, lv)) & PG_A
    assert dram.cases()                      # the CASes went out on the one memory port


# -- the GPA port alongside -----------------------------------------------------------------

def test_gpa_requests_interleaved_with_linear_ones():
    la2 = LA + (1 << 30)

    def build(w):
        w.guest_map(LA, DATA_GPA)
        w.guest_map(la2, DATA_GPA + 0x20_0000, Level.PDE)
        for k in range(4):
            w.ept_map(0x8000_0000 + k * 0x1000)
    gpa = [(0x8000_0000 + k * 0x1000 + 8 * k, Access.READ, k) for k in range(4)]
    gpa.append((0x9000_0000, Access.READ, 5))               # unmapped: a violation
    out, *_ = check(build, [(LA, Access.READ, False), (la2, Access.WRITE, False),
                            (LA, Access.WRITE, False)], gpa=gpa, gpa_delay=3)
    assert [r.outcome for r, _ in out["linear"]] == [LinearOutcome.OK] * 3
    assert out["gpa"][5].outcome == HOutcome.VIOLATION
    assert guest_tag(0) not in out["gpa"]
    assert out["linear_done_before_gpa"] == 0        # all answered during the first 2D walk


# -- the guest context ------------------------------------------------------------------------

def test_refused_cr3_is_never_walked():
    w = World()
    w.guest_map(LA, DATA_GPA)
    out, dram, _ = run_nested(w, [la_req(LA, tag=6)], cr3=w.regs.cr3 | 1 << 50)   # MAXPHYADDR 46
    assert out["cr3"] == (0, 1, 1)
    resp, _ = out["linear"][0]
    assert resp.outcome == LinearOutcome.REFUSED and resp.tag == 6
    assert dram.log == []


# -- Verilog --------------------------------------------------------------------------------

def test_nested_top_verilog_is_lint_clean(tmp_path):
    from sim.flows.lint import lint
    from sim.flows.verilog import TOP_NAME, generate
    out = tmp_path / f"{TOP_NAME}.v"          # the waivers name the file
    text = generate({}, "nested")
    top = text[text.index(f"module {TOP_NAME}("):]
    for port in ("linear_req__valid", "cr3_value", "translate_req__valid", "mem_req__valid"):
        assert port in top
    out.write_text(text)
    clean, output = lint(out)
    assert clean, output[-3000:]
