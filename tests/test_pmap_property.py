"""Property test of the NetBSD EPT pmap model: random operation sequences.

Two EPT pmaps and one native pmap share a PageDB and a PTP allocator.  A
shadow dict ``{(pmap index, va): [pa, prot, wired]}`` says what must be mapped;
after every step the tables in DRAM, the walker, extract, the statistics,
the PV lists and the allocator must agree with it.

A small TLB model checks the shootdowns: each successful translate caches
(hpa, R/W/X, dirty) for the page in that pmap; a shootdown callback drops the
page named by its va.  After every step every cached translation must still
be right for memory: same frame, and write permission still granted if it
was cached from a dirty entry (a cached entry with D = 0 cannot satisfy a
write, the walker re-walks; see ept-reference.md).  X is not checked: NetBSD
does not shoot down on an X change in pmap_ept_enter (only frame or W).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.formats import EPT_A, EPT_D, EPT_PVLIST, EPT_R, EPT_W, EPT_WIRED, Access, Outcome
from model.physmem import FrameAllocator, PhysicalMemory
from model.pmap import (
    ENOMEM, PMAP_CANFAIL, PMAP_NOCACHE, PMAP_WIRED, PMAP_WRITE_COMBINE, PP_ATTRS_M,
    PP_ATTRS_U, VM_MAXUSER_ADDRESS, VM_PROT_EXECUTE, VM_PROT_NONE, VM_PROT_READ,
    VM_PROT_WRITE, PageDB, Pmap, PmapError, native_mmu_access,
)
from model.walk import translate, walk

PG_V, PG_RW, PG_U, PG_M, PG_W, PG_PVLIST = 1, 2, 1 << 5, 1 << 6, 1 << 9, 1 << 10
FRAME = 0x000FFFFFFFFFF000
K4 = 4096
PTP_BASE = 0x100000
GUEST_BASE = 0x1000000
N_PAGES = 6
UNMANAGED = 0x80000000
PTP_FRAMES = 20          # fewer than three full pmaps need: ENOMEM happens


def gva(pml4=0, pdpt=0, pd=0, pt=0):
    return (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12)


# Neighbours across 2M, 1G and 512G boundaries, plus the top of user space.
CANDS = sorted({
    gva(0, 0, 0, 0), gva(0, 0, 0, 1), gva(0, 0, 0, 2), gva(0, 0, 0, 511),
    gva(0, 0, 1, 0), gva(0, 0, 1, 5),
    gva(0, 0, 511, 511),
    gva(0, 1, 0, 0), gva(0, 1, 0, 1),
    gva(0, 1, 7, 3),
    gva(0, 511, 511, 511),
    gva(1, 0, 0, 0), gva(1, 0, 0, 1),
    gva(1, 2, 3, 4),
    gva(254, 0, 0, 0),
    VM_MAXUSER_ADDRESS - 2 * K4, VM_MAXUSER_ADDRESS - K4,
})
PAS = [GUEST_BASE + i * K4 for i in range(N_PAGES)]
EPT_PMAPS = (0, 1)
NATIVE = 2


def _ptp_keys(vas):
    return ({va >> 39 for va in vas}, {va >> 30 for va in vas}, {va >> 21 for va in vas})


def expected_ptps(vas) -> int:
    return sum(len(k) for k in _ptp_keys(vas))


def needed_ptps(vas, va) -> int:
    l3, l2, l1 = _ptp_keys(vas)
    return (va >> 39 not in l3) + (va >> 30 not in l2) + (va >> 21 not in l1)


class World:
    def __init__(self):
        self.mem = PhysicalMemory()
        self.ptp_frames = FrameAllocator(self.mem, PTP_BASE, PTP_FRAMES)
        self.guest = FrameAllocator(self.mem, GUEST_BASE, N_PAGES)
        self.pages = PageDB(self.guest)
        self.tlb: list[dict[int, tuple[int, int, bool]]] = [{}, {}, {}]
        self.shots = 0
        self.pms: list[Pmap] = []
        for i in range(3):
            pm = Pmap(self.mem, self.ptp_frames, self.pages, tlb_flush=self._flush)
            if i in EPT_PMAPS:
                pm.ept_transform()
            self.pms.append(pm)
        self.eptps = [self.pms[i].eptp() for i in EPT_PMAPS]
        self.shadow: dict[tuple[int, int], list] = {}

    def _flush(self, pmap, va, why):
        self.shots += 1
        i = self.pms.index(pmap)
        self.tlb[i].pop(va & ~(K4 - 1), None)

    def vas(self, pmi):
        return [va for (i, va) in self.shadow if i == pmi]

    def mappings_of(self, pa):
        return [(i, va) for (i, va), v in self.shadow.items() if v[0] == pa]

    def leaf(self, pmi, va):
        return self.pms[pmi].lookup(va)

    def bit(self, pmi, what):
        """The accessed / dirty bit of pmap pmi's format."""
        if pmi == NATIVE:
            return {"A": PG_U, "D": PG_M}[what]
        return {"A": EPT_A, "D": EPT_D}[what]

    # -- operations ----------------------------------------------------------
    def enter(self, pmi, va, pa, prot, wired, access, cache):
        pm = self.pms[pmi]
        flags = PMAP_CANFAIL | cache | access | (PMAP_WIRED if wired else 0)
        need = 0 if (pmi, va) in self.shadow else needed_ptps(self.vas(pmi), va)
        free = self.ptp_frames.free_frames
        before = list(self.mem.nonzero_words())
        r = pm.enter(va, pa, prot, flags)
        if need > free:
            assert r == ENOMEM
            pm.update()              # pmap_unget_ptp queued them on pm_gc_ptp
            assert self.ptp_frames.free_frames == free
            assert list(self.mem.nonzero_words()) == before
            return
        assert r == 0
        assert self.ptp_frames.free_frames == free - need
        self.shadow[(pmi, va)] = [pa, prot, wired]
        pte = self.leaf(pmi, va)
        if access:
            assert pte & self.bit(pmi, "A")
        if access & VM_PROT_WRITE:
            assert pte & self.bit(pmi, "D")

    def remove(self, pmi, sva, eva):
        self.pms[pmi].remove(sva, eva)
        for key in [k for k in self.shadow if k[0] == pmi and sva <= k[1] < eva]:
            del self.shadow[key]

    def _drop_w(self, keys, native_drop_x=False):
        for k in keys:
            self.shadow[k][1] &= ~VM_PROT_WRITE
            if native_drop_x and k[0] == NATIVE:
                self.shadow[k][1] &= ~VM_PROT_EXECUTE

    def write_protect(self, pmi, sva, eva, prot):
        self.pms[pmi].write_protect(sva, eva, prot)
        keys = [k for k in self.shadow if k[0] == pmi and sva <= k[1] < eva]
        if not prot & VM_PROT_WRITE:
            self._drop_w(keys)
        if not prot & VM_PROT_EXECUTE:      # native puts NX; EPT has nothing to put
            for k in keys:
                if k[0] == NATIVE:
                    self.shadow[k][1] &= ~VM_PROT_EXECUTE

    def protect(self, pmi, sva, eva, prot):
        self.pms[pmi].protect(sva, eva, prot)
        if prot & VM_PROT_WRITE:
            return
        keys = [k for k in self.shadow if k[0] == pmi and sva <= k[1] < eva]
        if prot & (VM_PROT_READ | VM_PROT_EXECUTE):
            self._drop_w(keys, native_drop_x=not prot & VM_PROT_EXECUTE)
        else:
            for k in keys:
                del self.shadow[k]

    def page_protect(self, pa, prot):
        self.pages.page_protect(pa, prot)
        if prot & VM_PROT_WRITE:
            return
        keys = self.mappings_of(pa)
        if prot & (VM_PROT_READ | VM_PROT_EXECUTE):
            self._drop_w(keys)
            for i, va in keys:
                assert not self.leaf(i, va) & (PG_RW if i == NATIVE else EPT_W)
        else:
            for k in keys:
                del self.shadow[k]
            assert self.pages.page(pa).pv == []

    def unwire(self, pmi, va):
        pm = self.pms[pmi]
        if (pmi, va) in self.shadow:
            assert pm.unwire(va) is self.shadow[(pmi, va)][2]
            self.shadow[(pmi, va)][2] = False
        else:
            before = (pm.resident_count, pm.wired_count)
            try:
                pm.unwire(va)
            except PmapError:
                pass
            else:
                raise AssertionError(f"unwire of unmapped va {va:#x} did not fail")
            assert (pm.resident_count, pm.wired_count) == before

    def _any_bit(self, pa, what):
        return any(self.leaf(i, va) & self.bit(i, what) for i, va in self.mappings_of(pa))

    def clear(self, pa, what):
        attr = PP_ATTRS_U if what == "A" else PP_ATTRS_M
        expect = bool(self.pages.page(pa).attrs & attr) or self._any_bit(pa, what)
        fn = self.pages.clear_reference if what == "A" else self.pages.clear_modify
        assert fn(pa) is expect
        for i, va in self.mappings_of(pa):
            assert not self.leaf(i, va) & self.bit(i, what)
            assert not self.leaf(i, va) & self.bit(i, "D")   # D never outlives A
        test = self.pages.is_referenced if what == "A" else self.pages.is_modified
        assert test(pa) is False

    def test(self, pa, what):
        attr = PP_ATTRS_U if what == "A" else PP_ATTRS_M
        expect = bool(self.pages.page(pa).attrs & attr) or self._any_bit(pa, what)
        fn = self.pages.is_referenced if what == "A" else self.pages.is_modified
        assert fn(pa) is expect

    def hw(self, pmi, va, off, access):
        m = self.shadow.get((pmi, va))
        if pmi == NATIVE:
            write = access is Access.WRITE
            ok = m is not None and (not write or m[1] & VM_PROT_WRITE)
            r = native_mmu_access(self.pms[pmi], va | off, write=write)
            assert r == (m[0] | off if ok else None)
            if ok:
                pte = self.leaf(pmi, va)
                assert pte & PG_U and (not write or pte & PG_M)
            return
        eptp = self.eptps[pmi]
        need = {Access.READ: VM_PROT_READ, Access.WRITE: VM_PROT_WRITE,
                Access.FETCH: VM_PROT_EXECUTE}[access]
        ok = m is not None and bool(m[1] & need)
        before = list(self.mem.nonzero_words())
        t = translate(self.mem, eptp, va | off, access)
        if not ok:
            assert t.outcome is Outcome.VIOLATION, t
            assert list(self.mem.nonzero_words()) == before    # nothing set on a fault
            return
        assert t.outcome is Outcome.OK, t
        assert (t.hpa, t.page_size) == (m[0] | off, K4)
        pte = self.leaf(pmi, va)
        assert pte & EPT_A and (access is not Access.WRITE or pte & EPT_D)
        self.tlb[pmi][va] = (m[0], t.perms, bool(pte & EPT_D))

    # -- invariants -------------------------------------------------------------
    def check(self):
        live = [pm for pm in self.pms if not pm.destroyed]
        assert self.ptp_frames.allocated_frames == sum(1 + pm.ptp_count + pm.gc_ptp_count
                                                       for pm in live)
        for pmi, pm in enumerate(self.pms):
            mine = {va: v for (i, va), v in self.shadow.items() if i == pmi}
            valid = PG_V if pmi == NATIVE else EPT_R
            wbit = PG_RW if pmi == NATIVE else EPT_W
            wired_bit = PG_W if pmi == NATIVE else EPT_WIRED
            pv_bit = PG_PVLIST if pmi == NATIVE else EPT_PVLIST
            leaves = dict(pm.mappings())
            assert set(leaves) == set(mine)
            assert pm.resident_count == 1 + len(mine) + pm.ptp_count    # + the PDP
            assert pm.ptp_count == expected_ptps(mine)
            assert pm.wired_count == sum(1 for v in mine.values() if v[2])
            for va in CANDS:
                off = (va >> 12) & 0xFF8
                if va in mine:
                    pa, prot, wired = mine[va]
                    pte = leaves[va]
                    assert pte & valid and pte & FRAME == pa
                    assert bool(pte & wbit) == bool(prot & VM_PROT_WRITE)
                    assert bool(pte & wired_bit) == wired
                    assert bool(pte & pv_bit) == (pa in self.guest)
                    assert pm.extract(va | off) == pa | off
                else:
                    assert pm.extract(va | off) is None
                    assert pm.lookup(va) & valid == 0
                if pmi == NATIVE:
                    continue
                eptp = self.eptps[pmi]
                for access in Access:
                    t = walk(self.mem, eptp, va | off, access)
                    assert t.outcome is not Outcome.MISCONFIG, t
                    if va not in mine:
                        assert t.outcome is Outcome.VIOLATION
                        continue
                    need = {Access.READ: VM_PROT_READ, Access.WRITE: VM_PROT_WRITE,
                            Access.FETCH: VM_PROT_EXECUTE}[access]
                    if mine[va][1] & need:
                        assert t.outcome is Outcome.OK and t.hpa == mine[va][0] | off, t
                    else:
                        assert t.outcome is Outcome.VIOLATION, t
            # every translation a TLB may still hold is right for memory
            if pmi != NATIVE:
                for gpa, (hpa, perms, dirty) in self.tlb[pmi].items():
                    t = walk(self.mem, self.eptps[pmi], gpa, Access.READ)
                    assert t.outcome is Outcome.OK and t.hpa == hpa, (
                        f"stale TLB entry for {gpa:#x} -> {hpa:#x}: memory says {t}")
                    if dirty and perms & EPT_W:
                        t = walk(self.mem, self.eptps[pmi], gpa, Access.WRITE)
                        assert t.outcome is Outcome.OK, (
                            f"cached writable dirty {gpa:#x} lost W without a shootdown")
        for pa in PAS:
            pv = self.pages.page(pa).pv
            assert len(pv) == len(set(pv))
            assert set(pv) == {(self.pms[i], va) for i, va in self.mappings_of(pa)}

    def teardown(self):
        for pm in self.pms:
            pm.remove(0, VM_MAXUSER_ADDRESS)
        self.shadow.clear()
        self.check()
        assert self.tlb == [{}, {}, {}], "a cached translation was never shot down"
        for pm in self.pms:
            assert pm.destroy() is True
        assert self.ptp_frames.allocated_frames == 0
        for pa in PAS:
            assert self.pages.page(pa).pv == []


# -- strategies -------------------------------------------------------------------
va_i = st.integers(0, len(CANDS) - 1)
pmap_i = st.integers(0, 2)
page = st.integers(0, N_PAGES)           # N_PAGES means an unmanaged frame
prot_s = st.sampled_from([VM_PROT_READ, VM_PROT_READ | VM_PROT_WRITE,
                          VM_PROT_READ | VM_PROT_EXECUTE, 7])
lower_prot = st.sampled_from([VM_PROT_NONE, VM_PROT_READ, VM_PROT_READ | VM_PROT_EXECUTE,
                              VM_PROT_READ | VM_PROT_WRITE])

ops = st.one_of(
    st.tuples(st.just("enter"), pmap_i, va_i, page, prot_s, st.booleans(),
              st.sampled_from([0, VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE]),
              st.sampled_from([0, PMAP_NOCACHE, PMAP_WRITE_COMBINE])),
    st.tuples(st.just("enter"), pmap_i, va_i, page, prot_s, st.booleans(),
              st.just(0), st.just(0)),
    st.tuples(st.just("enter"), pmap_i, va_i, page, prot_s, st.just(False),
              st.just(VM_PROT_READ), st.just(0)),
    st.tuples(st.just("remove"), pmap_i, va_i, va_i),
    st.tuples(st.just("remove_all"), pmap_i),
    st.tuples(st.just("protect"), pmap_i, va_i, st.integers(1, 520), lower_prot),
    st.tuples(st.just("write_protect"), pmap_i, va_i, st.integers(1, 520),
              st.sampled_from([VM_PROT_READ, VM_PROT_READ | VM_PROT_WRITE])),
    st.tuples(st.just("page_protect"), st.integers(0, N_PAGES - 1), lower_prot),
    st.tuples(st.just("unwire"), pmap_i, va_i),
    st.tuples(st.just("clear"), st.integers(0, N_PAGES - 1), st.sampled_from("AD")),
    st.tuples(st.just("test"), st.integers(0, N_PAGES - 1), st.sampled_from("AD")),
    st.tuples(st.just("hw"), pmap_i, va_i, st.integers(0, 0xFFF), st.sampled_from(list(Access))),
    st.tuples(st.just("hw"), pmap_i, va_i, st.just(0), st.sampled_from(list(Access))),
    # the same on a mapping that exists now (k indexes the sorted shadow), so
    # that operations meet each other often enough to matter
    st.tuples(st.just("hw_mapped"), st.integers(0, 99), st.sampled_from(list(Access))),
    st.tuples(st.just("hw_mapped"), st.integers(0, 99), st.sampled_from(list(Access))),
    st.tuples(st.just("reenter"), st.integers(0, 99), page, prot_s, st.booleans(),
              st.sampled_from([0, VM_PROT_READ, VM_PROT_WRITE])),
    st.tuples(st.just("wp_mapped"), st.integers(0, 99), st.integers(1, 3),
              st.sampled_from([VM_PROT_READ, VM_PROT_READ | VM_PROT_WRITE, VM_PROT_NONE])),
    st.tuples(st.just("remove_mapped"), st.integers(0, 99)),
)


def run(seq):
    w = World()
    w.check()
    for op in seq:
        kind = op[0]
        if kind.endswith("_mapped") or kind == "reenter":
            if not w.shadow:
                continue
            pmi, va = sorted(w.shadow)[op[1] % len(w.shadow)]
        if kind == "hw_mapped":
            w.hw(pmi, va, 0x18, op[2])
        elif kind == "reenter":
            _, _, pgi, prot, wired, access = op
            if access & VM_PROT_WRITE and not prot & VM_PROT_WRITE:
                access = VM_PROT_READ
            pa = PAS[pgi] if pgi < N_PAGES else UNMANAGED + pgi * K4
            w.enter(pmi, va, pa, prot, wired, access, 0)
        elif kind == "wp_mapped":
            _, _, n, prot = op
            w.protect(pmi, va, va + n * K4, prot)
        elif kind == "remove_mapped":
            w.remove(pmi, va, va + K4)
        elif kind == "enter":
            _, pmi, vi, pgi, prot, wired, access, cache = op
            if access & VM_PROT_WRITE and not prot & VM_PROT_WRITE:
                access = VM_PROT_READ
            pa = PAS[pgi] if pgi < N_PAGES else UNMANAGED + pgi * K4
            w.enter(pmi, CANDS[vi], pa, prot, wired, access, cache)
        elif kind == "remove":
            _, pmi, a, b = op
            a, b = sorted((a, b))
            w.remove(pmi, CANDS[a], CANDS[b] + K4)
        elif kind == "remove_all":
            w.remove(op[1], 0, VM_MAXUSER_ADDRESS)
        elif kind in ("protect", "write_protect"):
            _, pmi, vi, n, prot = op
            sva = CANDS[vi]
            eva = min(sva + n * K4, VM_MAXUSER_ADDRESS)
            getattr(w, kind)(pmi, sva, eva, prot)
        elif kind == "page_protect":
            w.page_protect(PAS[op[1]], op[2])
        elif kind == "unwire":
            w.unwire(op[1], CANDS[op[2]])
        elif kind == "clear":
            w.clear(PAS[op[1]], op[2])
        elif kind == "test":
            w.test(PAS[op[1]], op[2])
        elif kind == "hw":
            _, pmi, vi, off, access = op
            w.hw(pmi, CANDS[vi], off & ~7 if access is not Access.FETCH else off, access)
        w.check()
        for pm in w.pms:            # UVM's protocol: pmap_update after the pmap calls
            pm.update()
        w.check()
    w.teardown()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=20, max_size=40))
def test_random_pmap_sequences(seq):
    run(seq)


def test_fixed_sequence_through_every_operation():
    """One hand-written run of the harness, so a broken harness shows up too."""
    R, RW, RWX = VM_PROT_READ, VM_PROT_READ | VM_PROT_WRITE, 7
    i = CANDS.index
    seq = [
        ("enter", 0, i(gva(0, 0, 0, 511)), 0, RW, True, 0, 0),
        ("enter", 0, i(gva(0, 0, 1, 0)), 1, RWX, False, VM_PROT_WRITE, 0),
        ("enter", 1, i(gva(0, 0, 0, 511)), 0, R, False, 0, PMAP_NOCACHE),
        ("enter", 2, i(gva(1, 0, 0, 0)), 0, RW, True, 0, 0),
        ("hw", 0, i(gva(0, 0, 0, 511)), 0x10, Access.WRITE),
        ("hw", 1, i(gva(0, 0, 0, 511)), 0, Access.READ),
        ("hw", 2, i(gva(1, 0, 0, 0)), 0, Access.WRITE),
        ("test", 0, "D"),
        ("write_protect", 0, i(gva(0, 0, 0, 511)), 2, R),
        ("hw", 0, i(gva(0, 0, 0, 511)), 0, Access.WRITE),
        ("clear", 0, "A"),
        ("page_protect", 1, R),
        ("unwire", 0, i(gva(0, 0, 0, 511))),
        ("unwire", 0, i(gva(0, 0, 0, 0))),
        ("protect", 1, i(gva(0, 0, 0, 511)), 1, VM_PROT_NONE),
        ("enter", 0, i(gva(0, 0, 1, 0)), 2, RW, False, VM_PROT_READ, 0),
        ("remove", 0, i(gva(0, 0, 0, 0)), i(gva(0, 1, 0, 0))),
        ("page_protect", 0, VM_PROT_NONE),
        ("enter", 0, i(VM_MAXUSER_ADDRESS - K4), N_PAGES, RW, True, VM_PROT_WRITE, 0),
        ("hw", 0, i(VM_MAXUSER_ADDRESS - K4), 8, Access.READ),
    ]
    run(seq)
