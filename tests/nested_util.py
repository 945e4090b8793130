"""A hand-built nested world for the 2D-walk tests: EPT tables in host memory,
guest tables at guest-physical addresses that EPT maps elsewhere.

Guest pages are EPT-mapped to HPAs far from their GPAs (GPA + HOST_OFFSET, or
a fresh frame), so a walk that read a guest entry at its GPA instead of its
HPA finds a zero word and shows up as a #PF.
"""

from __future__ import annotations

from collections import deque

from conftest import receive, run, send
from model.formats import (
    EPT_RWX, Access, EptConfig, Eptp, Level, MemType, gpa_index, make_leaf_entry as ept_leaf,
    make_table_entry as ept_table,
)
from model.guest import GuestRegs, la_index, make_leaf_entry, make_table_entry
from model.physmem import PhysicalMemory

from hw.layouts import Access as HAccess
from hw.layouts import InveptKind, MemOp, PageSize
from hw.nested_top import NestedWalkUnit
from model.nested import translate_la

EPT_TABLES_BASE = 0x0010_0000
HOST_OFFSET = 0x4_0000_0000          # HPA = GPA + HOST_OFFSET for identity-shaped maps
GUEST_TABLES_GPA = 0x0020_0000       # guest page-table pages are allocated from here

LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)


class World:
    def __init__(self, ad: bool = False, maxphyaddr: int = 46, paging: bool = True,
                 wp: bool = True, nxe: bool = True):
        self.config = EptConfig(maxphyaddr=maxphyaddr)
        self.mem = PhysicalMemory(maxphyaddr)
        self._ept_next = EPT_TABLES_BASE
        self.ept_pml4 = self._ept_alloc()
        self.eptp = Eptp(pml4_pa=self.ept_pml4, memtype=MemType.WB, ad_enabled=ad)
        self._gtable_next = GUEST_TABLES_GPA
        self.ept_pages: dict[int, int] = {}          # GPA page -> HPA page (4K EPT leaves)
        self.guest_pml4 = self.guest_table()
        self.regs = GuestRegs(cr3=self.guest_pml4, paging=paging, wp=wp, nxe=nxe)

    # -- EPT -------------------------------------------------------------------
    def _ept_alloc(self) -> int:
        pa = self._ept_next
        self._ept_next += 0x1000
        return pa

    def ept_entry_addr(self, gpa: int, level: Level, create: bool = True) -> int:
        table = self.ept_pml4
        for lv in LEVELS:
            addr = table + gpa_index(gpa, lv) * 8
            if lv == level:
                return addr
            e = self.mem.peek(addr)
            if not e & 7:
                if not create:
                    raise KeyError(hex(gpa))
                e = ept_table(self._ept_alloc())
                self.mem.write(addr, e)
            table = e & ~0xFFF & ((1 << 52) - 1)
        raise AssertionError

    def ept_map(self, gpa: int, hpa: int | None = None, perms: int = EPT_RWX,
                level: Level = Level.PTE, memtype: int = MemType.WB) -> int:
        size = level.page_size
        gpa &= ~(size - 1)
        if hpa is None:
            hpa = gpa + HOST_OFFSET
        self.mem.write(self.ept_entry_addr(gpa, level), ept_leaf(hpa, level, perms, memtype))
        if level == Level.PTE:
            self.ept_pages[gpa] = hpa
        else:
            for off in range(0, size, 0x1000) if size <= 1 << 21 else ():
                self.ept_pages[gpa + off] = hpa + off
        return hpa

    def ept_leaf_addr(self, gpa: int) -> int:
        return self.ept_entry_addr(gpa, Level.PTE, create=False)

    def set_ept(self, gpa: int, level: Level, value: int) -> None:
        self.mem.write(self.ept_entry_addr(gpa, level, create=False), value)

    def hpa_of(self, gpa: int) -> int:
        return self.ept_pages[gpa & ~0xFFF] | (gpa & 0xFFF)

    # -- guest memory (through the EPT map built here) ------------------------
    def gwrite(self, gpa: int, value: int) -> None:
        self.mem.write(self.hpa_of(gpa), value)

    def gread(self, gpa: int) -> int:
        return self.mem.peek(self.hpa_of(gpa))

    def guest_table(self, gpa: int | None = None) -> int:
        """A guest page-table page, EPT-mapped (4K): the next one from
        GUEST_TABLES_GPA up, or at ``gpa``."""
        if gpa is None:
            gpa = self._gtable_next
            self._gtable_next += 0x1000
        self.ept_map(gpa)
        return gpa

    def guest_entry_gpa(self, la: int, level: Level) -> int:
        table = self.guest_pml4
        for lv in LEVELS:
            addr = table + la_index(la, lv) * 8
            if lv == level:
                return addr
            e = self.gread(addr)
            table = e & 0x000F_FFFF_FFFF_F000
        raise AssertionError

    def guest_map(self, la: int, gpa: int, level: Level = Level.PTE, rw: bool = True, user: bool = True,
                  xd: bool = False, accessed: bool = False, dirty: bool = False,
                  table_rw: bool = True, table_user: bool = True, table_accessed: bool = False,
                  ept: bool = True, ept_perms: int = EPT_RWX,
                  table_gpas: dict[Level, int] | None = None) -> None:
        """Map guest page ``la`` -> ``gpa`` with a leaf at ``level``; EPT-map the data
        page too (4K EPT leaves) unless ``ept`` is false.  ``table_gpas``: where to put
        a guest table that must be created (by the level of its entries)."""
        table = self.guest_pml4
        for lv in LEVELS:
            addr = table + la_index(la, lv) * 8
            if lv == level:
                self.gwrite(addr, make_leaf_entry(gpa, lv, rw=rw, user=user, xd=xd,
                                                  accessed=accessed, dirty=dirty))
                break
            e = self.gread(addr)
            if not e & 1:
                at = (table_gpas or {}).get(LEVELS[LEVELS.index(lv) + 1])
                e = make_table_entry(self.guest_table(at), rw=table_rw, user=table_user,
                                     accessed=table_accessed)
                self.gwrite(addr, e)
            table = e & 0x000F_FFFF_FFFF_F000
        if ept:     # the first page and the one ``la`` falls in (4K EPT leaves)
            for off in {0, la & (level.page_size - 1) & ~0xFFF}:
                self.ept_map(gpa + off, perms=ept_perms)


SIZES = {4096: PageSize.SIZE_4K, 1 << 21: PageSize.SIZE_2M, 1 << 30: PageSize.SIZE_1G}


def compare_la(resp, ref, tag):
    """An RTL linear-translation response against the golden model's ``translate_la`` result."""
    assert resp.tag == tag
    assert resp.outcome.name.lower() == ref.outcome.value, (resp, ref.reason)
    if ref.outcome.value == "ok":
        assert (resp.gpa, resp.hpa, resp.page_size, resp.memtype) == \
            (ref.gpa, ref.hpa, SIZES[ref.page_size], ref.memtype)
    elif ref.outcome.value == "page_fault":
        assert resp.pf_error == ref.pf_error, ref.reason
    elif ref.outcome.value == "violation":
        assert (resp.gpa, resp.qual) == (ref.gpa, ref.qual), (hex(resp.qual), hex(ref.qual), ref.reason)
    else:
        assert resp.gpa == ref.gpa


# -- a DRAM and a bench for hw.nested_top.NestedWalkUnit in pysim --------------------------

def clone_memory(mem: PhysicalMemory) -> PhysicalMemory:
    """A copy of ``mem`` (its words only), for the golden model to run on."""
    out = PhysicalMemory(mem.maxphyaddr)
    for addr, value in mem.nonzero_words():
        out.write(addr, value)
    return out


class Dram:
    """An in-order memory on a ``mem_req``/``mem_resp`` pair over a ``PhysicalMemory``.

    Each request is performed the cycle it is taken (its answer fixed then) and
    answered ``latency`` cycles later (``latency``: an int, or a callable giving
    each request's, at least 1), after the answers before it.

    Parameters
    ----------
    mem_req, mem_resp
        The unit's memory port.
    phys : PhysicalMemory
        The memory; ``phys`` may be swapped between accesses (a fresh world).
    latency : int or callable
    errors : set of int
        Request numbers (1-based, counted over the whole run: ``count``) answered
        with ``error`` set; an errored CAS is not performed.
    hooks : list of callables
        ``hook(n, op, addr, compare, data, old)`` after request ``n`` is performed
        (``old``: the word read or found by the CAS).  A hook may write ``phys``:
        the write lands after this access and before any later one, so a hook on
        a read models an agent changing the word between that read and a CAS.

    Members
    -------
    log : list of (cycle, n, op, addr, compare, data, error)
    count : int
        Requests taken so far.
    """

    def __init__(self, mem_req, mem_resp, phys, latency=4, errors=(), hooks=()):
        self.mem_req, self.mem_resp = mem_req, mem_resp
        self.phys = phys
        self.latency = latency
        self.errors = set(errors)
        self.hooks = list(hooks)
        self.log = []
        self.count = 0

    def _latency(self):
        lat = self.latency() if callable(self.latency) else self.latency
        assert lat >= 1
        return lat

    def _perform(self, n, op, addr, compare, data):
        if n in self.errors:
            return 0, 1
        if op == MemOp.READ:
            old = self.phys.read(addr)
        else:
            _, old = self.phys.cas(addr, compare, data, source="walker")
        for hook in list(self.hooks):
            hook(n, op, addr, compare, data, old)
        return old, 0

    async def process(self, ctx):
        req, resp = self.mem_req, self.mem_resp
        queue = deque()          # (cycle due, data, error)
        cycle = 0
        ctx.set(req.ready, 1)
        async for _, _, valid, payload, resp_valid, resp_ready in ctx.tick().sample(
                req.valid, req.payload, resp.valid, resp.ready):
            cycle += 1
            if resp_valid and resp_ready:
                queue.popleft()
            if valid:
                self.count += 1
                n, op = self.count, MemOp(payload.op)
                addr, compare, data = payload.addr, payload.compare, payload.data
                value, error = self._perform(n, op, addr, compare, data)
                self.log.append((cycle, n, op, addr, compare, data, error))
                queue.append((cycle + self._latency() - 1, value, error))
            if queue and queue[0][0] <= cycle:
                _, value, error = queue[0]
                ctx.set(resp.payload, {"data": value, "error": error})
                ctx.set(resp.valid, 1)
            else:
                ctx.set(resp.valid, 0)

    def since(self, n):
        """The log entries of requests after request number ``n``."""
        return [e for e in self.log if e[1] > n]


def la_req(la, access=Access.READ, user=False, tag=3):
    """A LinearRequest payload (``access``: model.formats.Access)."""
    return {"la": la & ((1 << 48) - 1), "access": HAccess(int(access)), "user": user, "tag": tag}


class NestedBench:
    """A NestedWalkUnit in pysim with a :class:`Dram` on its memory port, driven by
    testbench coroutines that call this bench's async helpers.

    Parameters
    ----------
    world : World
        The world the DRAM starts on (:meth:`use` swaps it).
    latency : int or callable
        The DRAM's.
    vpid : int or None
        Loaded with the guest context if the unit has a VPID port (None: the world's
        ``regs.vpid``).
    **params
        To the NestedWalkUnit (``checks=True`` by default).

    Members
    -------
    lost_races : int
        ``lost_race`` strobes seen.
    cycle : int
        Cycles simulated so far.
    """

    def __init__(self, world, *, latency=4, vpid=None, **params):
        params.setdefault("checks", True)
        params.setdefault("maxphyaddr", world.config.maxphyaddr)
        self.dut = NestedWalkUnit(**params)
        self.world = world
        self.vpid = getattr(world.regs, "vpid", 1) if vpid is None else vpid
        self.dram = Dram(self.dut.mem_req, self.dut.mem_resp, world.mem, latency)
        self.lost_races = 0
        self.cycle = 0

    @property
    def has_vpid(self):
        return "vpid_load" in self.dut.signature.members

    def use(self, world):
        """Point the DRAM at ``world``'s memory (call while the unit is idle, then
        load the context and INVEPT: the unit's caches hold the last world's)."""
        self.world = world
        self.dram.phys = world.mem

    async def load_context(self, ctx, *, eptp=None, cr3=None, vpid=None):
        """Load the EPTP, CR3 (and the VPID if the unit has one: ``vpid``, else the
        bench's; ``vpid=False`` loads none) of ``world``; set CR0.PG, WP and EFER.NXE.
        Two cycles."""
        w, dut = self.world, self.dut
        ctx.set(dut.eptp_value, (w.eptp.encode() if eptp is None else eptp))
        ctx.set(dut.eptp_load, 1)
        ctx.set(dut.cr3_value, (w.regs.cr3 if cr3 is None else cr3) >> 12 & ((1 << 40) - 1))
        ctx.set(dut.cr3_load, 1)
        if self.has_vpid and vpid is not False:
            ctx.set(dut.vpid_value, self.vpid if vpid is None else vpid)
            ctx.set(dut.vpid_load, 1)
        ctx.set(dut.paging, w.regs.paging)
        ctx.set(dut.wp, w.regs.wp)
        ctx.set(dut.nxe, w.regs.nxe)
        await ctx.tick()
        ctx.set(dut.eptp_load, 0)
        ctx.set(dut.cr3_load, 0)
        if self.has_vpid:
            ctx.set(dut.vpid_load, 0)
        await ctx.tick()
        return ctx.get(dut.cr3_valid), ctx.get(dut.cr3_error), ctx.get(dut.eptp_valid)

    async def invept(self, ctx, kind=InveptKind.GLOBAL, tag=0):
        """One INVEPT (always taken), one cycle."""
        ctx.set(self.dut.invept.payload, {"kind": kind, "tag": tag})
        ctx.set(self.dut.invept.valid, 1)
        await ctx.tick()
        ctx.set(self.dut.invept.valid, 0)

    async def invvpid(self, ctx, kind, vpid, la=0):
        """One INVVPID (always taken), one cycle; ``kind``: an InvvpidKind."""
        ctx.set(self.dut.invvpid.payload, {"kind": kind, "vpid": vpid, "la": la & ((1 << 64) - 1)})
        ctx.set(self.dut.invvpid.valid, 1)
        await ctx.tick()
        ctx.set(self.dut.invvpid.valid, 0)

    async def mov_cr3(self, ctx, cr3=None):
        """MOV to CR3 (the world's CR3 again by default), one cycle."""
        cr3 = self.world.regs.cr3 if cr3 is None else cr3
        ctx.set(self.dut.cr3_value, cr3 >> 12 & ((1 << 40) - 1))
        ctx.set(self.dut.cr3_load, 1)
        await ctx.tick()
        ctx.set(self.dut.cr3_load, 0)

    async def set_vpid(self, ctx, vpid):
        """Load a VPID; returns (vpid_valid, vpid_error) after it."""
        ctx.set(self.dut.vpid_value, vpid)
        ctx.set(self.dut.vpid_load, 1)
        await ctx.tick()
        ctx.set(self.dut.vpid_load, 0)
        return ctx.get(self.dut.vpid_valid), ctx.get(self.dut.vpid_error)

    async def set_eptp(self, ctx, eptp):
        """Load an EPTP (an Eptp); returns eptp_valid after it."""
        ctx.set(self.dut.eptp_value, eptp.encode())
        ctx.set(self.dut.eptp_load, 1)
        await ctx.tick()
        ctx.set(self.dut.eptp_load, 0)
        await ctx.tick()
        return ctx.get(self.dut.eptp_valid)

    async def counters(self, ctx):
        """The nested counters (and the unit's, prefixed ``unit.``), three cycles on (they
        show an event two cycles after it)."""
        for _ in range(3):
            await ctx.tick()
        out = {}
        if "nested_counters" in self.dut.signature.members:
            nc = self.dut.nested_counters
            out.update({name: ctx.get(getattr(nc, name)) for name in nc.shape().members})
        uc = self.dut.counters
        out.update({f"unit.{name}": ctx.get(getattr(uc, name)) for name in uc.shape().members})
        return out

    async def idle(self, ctx, timeout=3000):
        for _ in range(timeout):
            if ctx.get(self.dut.guest_idle):
                return
            await ctx.tick()
        raise AssertionError("guest_idle stayed low")

    async def fresh(self, ctx, world):
        """Swap to ``world`` with nothing cached: wait idle, load its context, INVEPT all."""
        await self.idle(ctx)
        self.use(world)
        state = await self.load_context(ctx)
        assert state == (1, 0, 1), state
        await self.invept(ctx)
        await ctx.tick()

    async def linear(self, ctx, la, access=Access.READ, user=False, tag=3, timeout=3000):
        """One linear request, answered before the next is sent: (response, cycles from
        the request's offer to its answer)."""
        waited = await send(ctx, self.dut.linear_req, la_req(la, access, user, tag), timeout=timeout)
        resp, r = await receive(ctx, self.dut.linear_resp, timeout=timeout)
        return resp, waited + r + 1

    async def _monitor(self, ctx):
        async for _, _, lost in ctx.tick().sample(self.dut.lost_race):
            self.cycle += 1
            self.lost_races += lost

    def run(self, *testbenches, processes=(), deadline_cycles=50_000):
        run(self.dut, *testbenches, processes=[self.dram.process, self._monitor, *processes],
            deadline_cycles=deadline_cycles)


def model_la(world, la, access=Access.READ, user=False):
    """The golden model's answer on ``world`` (its memory updated: A/D)."""
    return translate_la(world.mem, world.eptp, world.regs, la, access, user, world.config)
