"""Property: on random guest and EPT page tables, every translate_la equals the
composition of a guest-only walk (translate_la over an identity EPT, itself
checked against a direct walk of the guest image here) and EPT-only walks
(model.walk.walk) of each guest entry's GPA, the final GPA and the A/D writes.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings, strategies as st

from model.formats import EPT_R, EPT_RWX, EPT_W, EPT_X, Access, Level, MemType, Outcome
from model.guest import (
    PF_ID, PF_P, PF_RSVD, PF_US, PF_WR, PG_A, PG_D, PG_P, PG_PS, PG_RW, PG_US, PG_XD, GuestRegs,
    guest_reserved_mask,
)
from model.nested import LaOutcome, translate_la
from model.walk import walk

from nested_util import LEVELS, World

TABLES_GPA = 0x0100_0000
DATA_4K_GPA = 0x0200_0000
DATA_2M_GPA = 0x4000_0000
DATA_1G_GPA = 0x8000_0000
HOST_BASE = 0x10_0000_0000
FMASK = 0x000F_FFFF_FFFF_F000
MPA = 46

entry_bits = st.fixed_dictionaries({
    "p": st.sampled_from([True] * 24 + [False]),
    "rw": st.sampled_from([True] * 5 + [False]), "us": st.sampled_from([True] * 5 + [False]),
    "xd": st.sampled_from([False] * 5 + [True]),
    "a": st.booleans(), "d": st.booleans(),
    "rsvd": st.sampled_from([0] * 40 + [1 << 46, 1 << 51, PG_XD | 1 << 50]),
})
la_spec = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 2), st.integers(0, 2),
                    st.integers(0, 0xFFF) .map(lambda x: x & ~7),
                    st.sampled_from([Level.PTE] * 4 + [Level.PDE, Level.PDPTE]))
ept_perm = st.sampled_from([EPT_RWX] * 40 + [EPT_R, EPT_R | EPT_W, EPT_R | EPT_X, EPT_X, 0, EPT_W])
ept_type = st.sampled_from([MemType.WB] * 20 + [MemType.UC, MemType.WT, 2])
op = st.tuples(st.integers(0, 7), st.sampled_from([Access.READ, Access.WRITE, Access.FETCH]), st.booleans())


def build_guest(las, bits_iter):
    """The guest image {GPA word: value}, its pages, and the LAs as built."""
    image: dict[int, int] = {}
    next_table = [TABLES_GPA]
    data = {Level.PTE: DATA_4K_GPA, Level.PDE: DATA_2M_GPA, Level.PDPTE: DATA_1G_GPA}

    def new_table():
        g = next_table[0]
        next_table[0] += 0x1000
        return g

    pml4 = new_table()
    out = []
    for i4, i3, i2, i1, off, leaf in las:
        la = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12) | off
        table = pml4
        for lv in LEVELS:
            idx = (la >> (12 + 9 * (int(lv) - 1))) & 0x1FF
            addr = table + idx * 8
            is_leaf = lv == leaf
            if addr not in image:
                b = next(bits_iter)
                if is_leaf:
                    frame = data[lv]
                    data[lv] += lv.page_size
                    e = frame | (PG_PS if lv != Level.PTE else 0)
                else:
                    e = new_table()
                e |= (PG_P if b["p"] else 0) | (PG_RW if b["rw"] else 0) | (PG_US if b["us"] else 0)
                e |= (PG_XD if b["xd"] else 0) | (PG_A if b["a"] else 0)
                e |= (PG_D if b["d"] and is_leaf else 0) | b["rsvd"]
                image[addr] = e
            e = image[addr]
            high = e & ((1 << 52) - 1) & ~((1 << MPA) - 1)     # reserved address bits: no table below
            if is_leaf or not e & PG_P or high or (lv in (Level.PDPTE, Level.PDE) and e & PG_PS):
                break
            table = e & FMASK
        out.append(la)
    return pml4, image, out


def guest_only(image, regs, la, access, user):
    """A direct guest walk of the image: ('pf', code, step GPAs) or ('ok', gpa, step GPAs, perms)."""
    table = regs.pml4_gpa
    us, rw, xd = 1, 1, 0
    steps = []
    w, f = access is Access.WRITE, access is Access.FETCH
    base = (PF_WR if w else 0) | (PF_US if user else 0) | (PF_ID if f and regs.nxe else 0)
    for lv in LEVELS:
        a = table + ((la >> (12 + 9 * (int(lv) - 1))) & 0x1FF) * 8
        steps.append(a)
        e = image.get(a, 0)
        if not e & PG_P:
            return ("pf", base, steps)
        leaf = lv == Level.PTE or (lv != Level.PML4E and e & PG_PS)
        if e & guest_reserved_mask(lv, bool(leaf), MPA, regs.nxe):
            return ("pf", base | PF_P | PF_RSVD, steps)
        us &= bool(e & PG_US)
        rw &= bool(e & PG_RW)
        xd |= bool(e & PG_XD) and regs.nxe
        if leaf:
            size = lv.page_size
            gpa = (e & FMASK & ~(size - 1)) | (la & (size - 1))
            if (user and not us) or (w and not rw and (user or regs.wp)) or (f and xd):
                return ("pf", base | PF_P, steps)
            return ("ok", gpa, steps, (int(us), int(rw), int(xd)), size)
        table = e & FMASK
    raise AssertionError


def make_worlds(image, pages, perms, types, ad):
    """(real, identity): the real one maps every guest page to a scattered HPA with
    the drawn permissions; the identity one maps GPA = HPA, RWX."""
    real, ident = World(ad=ad), World(ad=False)
    for k, page in enumerate(sorted(pages)):
        hpa = HOST_BASE + ((k * 7919) % 4096) * 0x1000
        real.ept_map(page, hpa, perms[k % len(perms)], memtype=MemType.WB)
        mt = types[k % len(types)]
        if mt != MemType.WB:
            a = real.ept_leaf_addr(page)
            real.mem.write(a, (real.mem.peek(a) & ~0x38) | (int(mt) << 3))
        ident.ept_map(page, page)
    for gpa, v in image.items():
        real.gwrite(gpa, v)
        ident.gwrite(gpa, v)
    return real, ident


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(las=st.lists(la_spec, min_size=1, max_size=6), bits=st.lists(entry_bits, min_size=24, max_size=24),
       perms=st.lists(ept_perm, min_size=12, max_size=12), types=st.lists(ept_type, min_size=12, max_size=12),
       ops=st.lists(op, min_size=1, max_size=10), ad=st.booleans(), wp=st.booleans(), nxe=st.booleans())
def test_translate_la_is_guest_walk_composed_with_ept(las, bits, perms, types, ops, ad, wp, nxe):
    pml4, image, las = build_guest(las, iter(bits))
    pages = {g & ~0xFFF for g in image} | {pml4}
    for la in las:                            # the data page each LA lands on, if mapped
        r = guest_only(image, GuestRegs(cr3=pml4, wp=False, nxe=True), la, Access.READ, False)
        if r[0] == "ok":
            pages.add(r[1] & ~0xFFF)
    real, ident = make_worlds(image, pages, perms, types, ad)
    regs = GuestRegs(cr3=pml4, wp=wp, nxe=nxe)
    for i, access, user in ops:
        la = las[i % len(las)]
        want = guest_only(image, regs, la, access, user)
        # 1. the guest-only walk: translate_la over an identity EPT agrees with the direct walk
        gi = translate_la(ident.mem, ident.eptp, regs, la, access, user, ident.config)
        if want[0] == "pf":
            assert gi.outcome is LaOutcome.PAGE_FAULT and gi.pf_error == want[1]
        else:
            assert gi.outcome is LaOutcome.OK and (gi.gpa, gi.page_size) == (want[1], want[4])
        # 2. the composition with EPT-only walks of the real tables (pure walks, before the access)
        ps = Access.WRITE if ad else Access.READ
        expect = None
        for egpa in want[2]:
            t = walk(real.mem, real.eptp, egpa, ps, real.config)
            if t.outcome is not Outcome.OK:
                expect = (t.outcome, egpa, t.qual | 0x81 if t.qual is not None else None)
                break
            if real.mem.peek(t.hpa) != image.get(egpa, 0):
                raise AssertionError("guest image and DRAM diverged")
        needs = []
        if expect is None and want[0] == "ok":
            us, rw, xd = want[3]
            t = walk(real.mem, real.eptp, want[1], access, real.config)
            if t.outcome is not Outcome.OK:
                q = t.qual | 0x180 | us << 9 | rw << 10 | xd << 11 if t.qual is not None else None
                expect = (t.outcome, want[1], q)
            else:
                final = t
                for n, egpa in enumerate(want[2]):
                    e = image[egpa]
                    new = e | PG_A | (PG_D if n == len(want[2]) - 1 and access is Access.WRITE else 0)
                    if new != e:
                        if not ad:
                            c = walk(real.mem, real.eptp, egpa, Access.WRITE, real.config)
                            if c.outcome is not Outcome.OK:
                                expect = (c.outcome, egpa, c.qual | 0x81 if c.qual is not None else None)
                                break
                        needs.append((egpa, new))
        got = translate_la(real.mem, real.eptp, regs, la, access, user, real.config)
        event(f"{got.outcome.value} {got.stage.value if got.stage else ''}")
        if expect is not None:
            outcome = LaOutcome.VIOLATION if expect[0] is Outcome.VIOLATION else LaOutcome.MISCONFIG
            assert (got.outcome, got.gpa, got.qual) == (outcome, expect[1], expect[2]), got.reason
        elif want[0] == "pf":
            assert got.outcome is LaOutcome.PAGE_FAULT and got.pf_error == want[1]
        else:
            assert got.outcome is LaOutcome.OK, got.reason
            assert (got.gpa, got.hpa, got.page_size, got.memtype) == \
                (want[1], final.hpa, want[4], final.memtype)
        # guest A/D: exactly the updates owed (those before a failed A/D check included)
        for egpa, new in needs:
            image[egpa] = new
        for egpa, v in image.items():
            assert real.gread(egpa) == v, hex(egpa)
        # keep the identity world's guest image in step
        for egpa, v in image.items():
            ident.gwrite(egpa, v)
