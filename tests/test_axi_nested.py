# amaranth: UnusedElaboratable=no
"""hw.axi_top.NestedWalkerAxi in pysim: the nested unit behind the AXI4 master and the
AXI4-Lite CSRs.  The guest context is loaded through CSR writes (AXI4-Lite
transactions with random valid delays and ready stalls), memory is the behavioural
AXI memory with random stalls, and every AXI channel is checked by the protocol
monitor.  Linear answers are compared with ``model.nested.translate_la`` on an
identical world, and the whole memory at the end."""

import gc
import random

import pytest
from nested_util import World, compare_la
from test_axi import STALLY, AxiLiteMaster

from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hw.axi import Resp
from hw.axi_top import NestedWalkerAxi
from hw.csr import CAPS_GUEST, CSR_VERSION, Reg
from hw.layouts import Access as HAccess
from hw.layouts import NESTED_EVENTS, LinearOutcome
from model.formats import Access, Level
from model.nested import translate_la
from sim.cosim.axi_mem import AxiMemory, AxiMemoryConfig, AxiProtocolMonitor

LA = 0x0000_1234_5678_9ABC
DATA_GPA = 0x4000_0000
BOUND = 6000                  # cycles for one linear answer (a cold 2D walk over AXI)


def run_axi(world, body, *, seed=5, config=None, deadline=60_000):
    """Run ``body(ctx, dut, csr, out)`` against a NestedWalkerAxi over ``world.mem``."""
    dut = NestedWalkerAxi(maxphyaddr=world.config.maxphyaddr)
    axi_mem = AxiMemory(world.mem, dut.mem, config or AxiMemoryConfig(**STALLY, seed=seed))
    monitors = [AxiProtocolMonitor(dut.mem, "mem"), AxiProtocolMonitor(dut.csr, "csr")]
    csr = AxiLiteMaster(dut.csr, seed=seed)
    out = {"axi_mem": axi_mem, "cycle": 0}

    async def clock(ctx):
        async for _ in ctx.tick():
            out["cycle"] += 1
            assert out["cycle"] < deadline, "testbench deadline"

    async def bench(ctx):
        ctx.set(dut.linear_resp.ready, 0)
        await body(ctx, dut, csr, out)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(axi_mem.process)
    sim.add_process(clock)
    for mon in monitors:
        sim.add_process(mon.process)
    sim.add_testbench(bench)
    sim.run()
    for mon in monitors:
        assert mon.violations == []
    assert axi_mem.violations == []
    return out, dut


async def write_ok(ctx, csr, addr, value, strb=0xF):
    assert await csr.write(ctx, addr, value, strb) == Resp.OKAY, hex(addr)


async def read_ok(ctx, csr, addr):
    value, resp = await csr.read(ctx, addr)
    assert resp == Resp.OKAY, hex(addr)
    return value


async def load_context(ctx, csr, world, *, cr3=None, vpid=1):
    """EPTP, CR3, CR0.PG/WP, EFER.NXE and the VPID through the CSRs."""
    eptp = world.eptp.encode()
    cr3 = world.regs.cr3 if cr3 is None else cr3
    await write_ok(ctx, csr, Reg.EPTP_LO, eptp & 0xFFFF_FFFF)
    await write_ok(ctx, csr, Reg.EPTP_HI, eptp >> 32)
    await write_ok(ctx, csr, Reg.CR3_LO, cr3 & 0xFFFF_FFFF)
    await write_ok(ctx, csr, Reg.CR3_HI, cr3 >> 32)
    r = world.regs
    await write_ok(ctx, csr, Reg.GUEST_CTRL, r.paging | r.wp << 1 | r.nxe << 2)
    await write_ok(ctx, csr, Reg.VPID, vpid)


async def translate_linear(ctx, dut, la, access, user, tag, rng):
    """One request on the linear port, its answer taken under random ready stalls."""
    ctx.set(dut.linear_req.payload, {"la": la & ((1 << 48) - 1), "access": HAccess(int(access)),
                                     "user": user, "tag": tag})
    ctx.set(dut.linear_req.valid, 1)
    for _ in range(BOUND):
        _, _, ready = await ctx.tick().sample(dut.linear_req.ready)
        if ready:
            break
    else:
        raise AssertionError("linear request not taken")
    ctx.set(dut.linear_req.valid, 0)
    for _ in range(BOUND):
        stall = rng.random() < 0.3
        ctx.set(dut.linear_resp.ready, not stall)
        _, _, valid, payload = await ctx.tick().sample(dut.linear_resp.valid, dut.linear_resp.payload)
        if valid and not stall:
            ctx.set(dut.linear_resp.ready, 0)
            return payload
    raise AssertionError(f"no linear answer for {la:#x} within {BOUND} cycles")


async def read_counters(ctx, dut, csr):
    """Every counter through the CSRs (LO then HI) and straight from the units."""
    got, direct = {}, {}
    nested_names = set(dut.nested_counter_names)
    for i, name in enumerate(dut.csr_block.counter_names):
        if i == 0:
            direct[name] = ctx.get(dut.master.cas_retries)
        elif name in nested_names:
            direct[name] = ctx.get(dut.nested.nested_counters[name])
        else:
            direct[name] = ctx.get(dut.nested.counters[name])
        lo = await read_ok(ctx, csr, Reg.counter_lo(i))
        hi = await read_ok(ctx, csr, Reg.counter_hi(i))
        got[name] = hi << 32 | lo
    return got, direct


# -- the guest section's registers ----------------------------------------------------------

def test_every_guest_register_reads_back_and_reaches_the_unit():
    world = World()
    cr3 = 0x000A_BCDE_F000 | 0x018          # PWT/PCD set: ignored, read 0
    la = 0xFFFF_8000_1234_5000              # canonical, bit 63 set
    got = {}

    async def body(ctx, dut, csr, out):
        nested = dut.nested
        got["caps"] = await read_ok(ctx, csr, Reg.CAPS)
        got["version"] = await read_ok(ctx, csr, Reg.VERSION)
        got["reset"] = [await read_ok(ctx, csr, r) for r in (
            Reg.CR3_STATUS, Reg.GUEST_CTRL, Reg.GUEST_STATUS, Reg.VPID_STATUS, Reg.INVVPID_STATUS)]
        # CR3: LO alone loads nothing; HI loads {HI, LO}[51:12]
        await write_ok(ctx, csr, Reg.CR3_LO, cr3 & 0xFFFF_FFFF)
        got["cr3_before_hi"] = (ctx.get(nested.cr3_valid), ctx.get(nested.cr3_error))
        await write_ok(ctx, csr, Reg.CR3_HI, 0xFFF0_0000 | cr3 >> 32)      # bits 31:20 ignored
        got["cr3_regs"] = (await read_ok(ctx, csr, Reg.CR3_LO), await read_ok(ctx, csr, Reg.CR3_HI))
        got["cr3_unit"] = ctx.get(nested.cr3_value)
        got["cr3_status"] = await read_ok(ctx, csr, Reg.CR3_STATUS)
        # bit 46 at MAXPHYADDR 46: refused, and the status says so
        await write_ok(ctx, csr, Reg.CR3_HI, 1 << (46 - 32))
        got["bad_cr3_status"] = await read_ok(ctx, csr, Reg.CR3_STATUS)
        got["bad_cr3_unit"] = (ctx.get(nested.cr3_valid), ctx.get(nested.cr3_error))
        # a byte-strobed CR3_LO write changes the strobed bytes only (bits 11:0 stay 0)
        await write_ok(ctx, csr, Reg.CR3_LO, 0xFFFF_FFFF, strb=0b0100)
        got["cr3_lo_strobed"] = await read_ok(ctx, csr, Reg.CR3_LO)
        # GUEST_CTRL: PG, WP, NXE, each reaching its input
        ctrl = {}
        for bits in (0b001, 0b010, 0b100, 0b111 | 0xF8):
            await write_ok(ctx, csr, Reg.GUEST_CTRL, bits)
            ctrl[bits] = (await read_ok(ctx, csr, Reg.GUEST_CTRL),
                          (ctx.get(nested.paging), ctx.get(nested.wp), ctx.get(nested.nxe)))
        got["ctrl"] = ctrl
        got["idle"] = await read_ok(ctx, csr, Reg.GUEST_STATUS)
        # VPID: 0x1234 valid, then 0 refused, then 0xFFFF valid (bits above 15 ignored)
        vpids = []
        for v in (0x1234, 0, 0xABC_FFFF):
            await write_ok(ctx, csr, Reg.VPID, v)
            vpids.append((await read_ok(ctx, csr, Reg.VPID), await read_ok(ctx, csr, Reg.VPID_STATUS),
                          ctx.get(nested.vpid_valid), ctx.get(nested.vpid_error)))
        got["vpids"] = vpids
        # INVVPID: the registers, then a refused one (single-context, VPID 0), then one taken
        await write_ok(ctx, csr, Reg.INVVPID_KIND, 0)
        await write_ok(ctx, csr, Reg.INVVPID_VPID, 0x0007_0042)
        await write_ok(ctx, csr, Reg.INVVPID_LA_LO, la & 0xFFFF_FFFF)
        await write_ok(ctx, csr, Reg.INVVPID_LA_HI, la >> 32)
        got["invvpid_regs"] = [await read_ok(ctx, csr, r) for r in (
            Reg.INVVPID_KIND, Reg.INVVPID_VPID, Reg.INVVPID_LA_LO, Reg.INVVPID_LA_HI, Reg.INVVPID_TRIGGER)]
        seen = []

        async def trigger():
            await write_ok(ctx, csr, Reg.INVVPID_TRIGGER, 1)
            await ctx.tick()
            seen.append(await read_ok(ctx, csr, Reg.INVVPID_STATUS))

        await trigger()                              # kind 0, VPID 0x42, canonical LA: taken
        await write_ok(ctx, csr, Reg.INVVPID_LA_HI, 0x0000_8000)        # non-canonical
        await trigger()                              # refused
        await write_ok(ctx, csr, Reg.INVVPID_KIND, 1)
        await write_ok(ctx, csr, Reg.INVVPID_VPID, 0)
        await trigger()                              # single-context VPID 0: refused
        await write_ok(ctx, csr, Reg.INVVPID_KIND, 2)
        await trigger()                              # all contexts (VPID 0 is fine): taken
        got["invvpid_status"] = seen
        got["counters"] = await read_counters(ctx, dut, csr)

    run_axi(world, body)
    assert got["caps"] == CAPS_GUEST and got["version"] == CSR_VERSION
    assert got["reset"] == [0, 0, 1, 0, 0]          # no CR3, paging off, idle, no VPID
    assert got["cr3_before_hi"] == (0, 0)
    assert got["cr3_regs"] == (cr3 & 0xFFFF_F000, cr3 >> 32)
    assert got["cr3_unit"] == cr3 >> 12
    assert got["cr3_status"] == 0b01
    assert got["bad_cr3_status"] == 0b10 and got["bad_cr3_unit"] == (0, 1)
    assert got["cr3_lo_strobed"] == (cr3 & 0xFF00_F000) | 0x00FF_0000      # byte 2 only
    assert got["ctrl"] == {0b001: (1, (1, 0, 0)), 0b010: (2, (0, 1, 0)), 0b100: (4, (0, 0, 1)),
                           0xFF: (7, (1, 1, 1))}
    assert got["idle"] == 1
    assert got["vpids"] == [(0x1234, 0b01, 1, 0), (0, 0b10, 0, 1), (0xFFFF, 0b01, 1, 0)]
    assert got["invvpid_regs"] == [0, 0x42, la & 0xFFFF_FFFF, la >> 32, 0]
    assert got["invvpid_status"] == [0, 1, 1, 0]
    counters, direct = got["counters"]
    assert counters == direct
    assert counters["invvpids"] == 4 and counters["cr3_loads"] == 2     # refused ones included


# -- end to end ---------------------------------------------------------------------------

def build_world(w):
    w.guest_map(LA, DATA_GPA, Level.PTE)
    w.guest_map(LA + (1 << 39), DATA_GPA + (1 << 30), Level.PDE, rw=False)
    w.guest_map(LA + (2 << 39), DATA_GPA + (2 << 30), Level.PDPTE, user=False)


REQUESTS = [
    (LA, Access.WRITE, True),                       # 4K, guest A/D and EPT A/D set by CASes
    (LA + 8, Access.READ, False),                   # the same page again
    (LA + (1 << 39), Access.WRITE, False),          # 2M read-only, WP=1: #PF
    (LA + (1 << 39) + 0x1000, Access.FETCH, True),  # 2M, fetch from a page EPT does not map
    (LA + (2 << 39), Access.READ, True),            # 1G supervisor page, user access: #PF
    (LA + (2 << 39), Access.READ, False),           # 1G, OK
    (LA + (3 << 39), Access.READ, False),           # not mapped: #PF
]


def test_linear_translations_through_the_axi_top_match_the_model():
    w_rtl, w_ref = World(ad=True), World(ad=True)
    build_world(w_rtl)
    build_world(w_ref)
    rng = random.Random(11)
    got = {"resps": []}

    async def body(ctx, dut, csr, out):
        await load_context(ctx, csr, w_rtl)
        got["status"] = [await read_ok(ctx, csr, r) for r in
                         (Reg.EPTP_STATUS, Reg.CR3_STATUS, Reg.VPID_STATUS)]
        for k, (la, access, user) in enumerate(REQUESTS):
            got["resps"].append(await translate_linear(ctx, dut, la, access, user, k % 8, rng))
        got["counters"] = await read_counters(ctx, dut, csr)

    out, _ = run_axi(w_rtl, body, seed=7)
    assert got["status"] == [1, 1, 1]
    refs = [translate_la(w_ref.mem, w_ref.eptp, w_ref.regs, la, access, user, w_ref.config)
            for la, access, user in REQUESTS]
    for k, (resp, ref) in enumerate(zip(got["resps"], refs, strict=True)):
        compare_la(resp, ref, tag=k % 8)
    outcomes = [r.outcome for r in got["resps"]]
    assert outcomes.count(LinearOutcome.OK) >= 3 and LinearOutcome.PAGE_FAULT in outcomes
    assert LinearOutcome.VIOLATION in outcomes
    # guest and EPT A/D landed where the model put them, through exclusive pairs only
    assert dict(w_rtl.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    axi_mem = out["axi_mem"]
    assert axi_mem.count("write") == 0 and axi_mem.count("ex_write", Resp.EXOKAY) > 0
    counters, direct = got["counters"]
    assert counters == direct
    assert counters["linear_lookups"] == len(REQUESTS)
    assert counters["guest_walks_completed"] >= 1 and counters["guest_mem_reads"] > 0


def test_bad_cr3_and_vpid_0_are_refused_through_the_csrs():
    """With paging on, a refused CR3 or a refused VPID (0) leaves the unit without one: a
    linear request is answered REFUSED and nothing goes out on AXI; a good load recovers."""
    world = World()
    world.guest_map(LA, DATA_GPA, Level.PTE)
    rng = random.Random(3)
    got = {}

    async def body(ctx, dut, csr, out):
        axi_mem = out["axi_mem"]
        await load_context(ctx, csr, world, cr3=world.regs.cr3 | 1 << 46)   # bit 46 at MAXPHYADDR 46
        got["bad_cr3"] = (await read_ok(ctx, csr, Reg.CR3_STATUS), await read_ok(ctx, csr, Reg.VPID_STATUS))
        reads = axi_mem.count("read")
        got["r1"] = await translate_linear(ctx, dut, LA, Access.READ, False, 1, rng)
        got["reads1"] = axi_mem.count("read") - reads
        await write_ok(ctx, csr, Reg.CR3_HI, world.regs.cr3 >> 32)          # a good CR3
        await write_ok(ctx, csr, Reg.VPID, 0)                               # VPID 0: refused
        got["bad_vpid"] = (await read_ok(ctx, csr, Reg.CR3_STATUS), await read_ok(ctx, csr, Reg.VPID_STATUS))
        reads = axi_mem.count("read")
        got["r2"] = await translate_linear(ctx, dut, LA, Access.READ, False, 2, rng)
        got["reads2"] = axi_mem.count("read") - reads
        await write_ok(ctx, csr, Reg.VPID, 9)
        got["r3"] = await translate_linear(ctx, dut, LA, Access.READ, False, 3, rng)

    run_axi(world, body)
    assert got["bad_cr3"] == (0b10, 0b01)
    assert got["r1"].outcome == LinearOutcome.REFUSED and got["r1"].tag == 1 and got["reads1"] == 0
    assert got["bad_vpid"] == (0b01, 0b10)
    assert got["r2"].outcome == LinearOutcome.REFUSED and got["r2"].tag == 2 and got["reads2"] == 0
    assert got["r3"].outcome == LinearOutcome.OK and got["r3"].hpa == world.hpa_of(DATA_GPA) | (LA & 0xFFF)


def test_a_context_write_waits_for_the_walk_in_flight_and_holds_linear_requests():
    """GUEST_CTRL (setting NXE) written while a 2D walk is in flight, its answer left
    waiting: the write acts only once the answer is taken (no guest access in flight), and
    a second request, offered all along, is not taken before the write has acted (with one
    guest walker it would otherwise be taken in that very cycle)."""
    world = World(nxe=False)
    world.guest_map(LA, DATA_GPA, Level.PTE)
    got = {"events": {}}
    flags = {"loaded": False, "first_taken": False}
    dut = NestedWalkerAxi(maxphyaddr=world.config.maxphyaddr)
    axi_mem = AxiMemory(world.mem, dut.mem, AxiMemoryConfig(seed=2))
    csr = AxiLiteMaster(dut.csr, seed=2, stall=0)

    async def watch(ctx):
        ev = got["events"]
        async for _, _, nxe, qv, qr, qp, sv, sr, sp in ctx.tick().sample(
                dut.nested.nxe, dut.linear_req.valid, dut.linear_req.ready, dut.linear_req.payload,
                dut.linear_resp.valid, dut.linear_resp.ready, dut.linear_resp.payload):
            cycle = got.setdefault("cycle", 0)
            if nxe and "nxe" not in ev:
                ev["nxe"] = cycle
            if qv and qr:
                ev[f"req{int(qp.tag)}"] = cycle
            if sv and sr:
                ev[f"resp{int(sp.tag)}"] = cycle
            got["cycle"] = cycle + 1

    async def body(ctx):
        await load_context(ctx, csr, world)
        got["ctrl"] = await read_ok(ctx, csr, Reg.GUEST_CTRL)
        flags["loaded"] = True
        while not flags["first_taken"]:
            await ctx.tick()
        await write_ok(ctx, csr, Reg.GUEST_CTRL, 0b111)             # PG, WP and now NXE

    async def linear(ctx):
        while not flags["loaded"]:
            await ctx.tick()
        ctx.set(dut.linear_req.payload, {"la": LA, "access": HAccess.READ, "user": 0, "tag": 4})
        ctx.set(dut.linear_req.valid, 1)
        await ctx.tick().until(dut.linear_req.ready)
        flags["first_taken"] = True
        ctx.set(dut.linear_req.payload, {"la": LA + 8, "access": HAccess.READ, "user": 0, "tag": 5})
        await ctx.tick().repeat(200)             # the first answer waits (the walk is done by then)
        ctx.set(dut.linear_resp.ready, 1)
        await ctx.tick().until(dut.linear_req.ready)
        ctx.set(dut.linear_req.valid, 0)
        await ctx.tick().until(dut.linear_resp.valid)
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(axi_mem.process)
    sim.add_process(watch)
    sim.add_testbench(body)
    sim.add_testbench(linear)
    sim.run_until(1e-8 * 2000)
    ev = got["events"]
    assert got["ctrl"] == 0b011
    assert {"req4", "resp4", "nxe", "req5", "resp5"} <= set(ev), ev
    assert ev["req4"] + 200 <= ev["resp4"] < ev["nxe"]        # the write waited for the answer
    assert ev["req5"] >= ev["nxe"]                             # the second request waited for it
    assert ev["req5"] <= ev["nxe"] + 1                         # and no longer


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # the refused ones' parts
def test_nested_top_forwards_params_and_lists_every_counter():
    top = NestedWalkerAxi(guest_walkers=2, maxphyaddr=40, axi_id_width=6)
    Fragment.get(top, None)           # elaborated: a wrong connection would raise here
    assert top.nested.n_guest == 2 and top.nested.unit.maxphyaddr == 40
    assert top.mem.arid.shape().width == 6
    names = top.csr_block.counter_names
    assert names == ["axi_cas_retries", *top.unit_counter_names, *top.nested_counter_names]
    assert set(top.nested_counter_names) == set(NESTED_EVENTS) and "lookups" in top.unit_counter_names
    with pytest.raises(ValueError, match="guest_walkers"):
        NestedWalkerAxi(guest_walkers=9)
    with pytest.raises(ValueError, match="maxphyaddr"):
        NestedWalkerAxi(maxphyaddr=60)
    gc.collect()                      # their unused parts warn now, under this test's filter
