"""Layouts and enums shared by the page-walk unit's blocks.

Every enum has a shape, so waveforms show names; every bundle crossing a port
is a ``data.Struct`` layout.  Bit positions of :data:`EptEntry` are the
architectural ones (Intel SDM vol. 3C, table 29-x; docs/ept.md).
"""

from amaranth.lib import data, enum

from .params import check_int

__all__ = [
    "GPA_BITS", "PA_BITS", "FRAME_BITS", "Access", "Outcome", "PageSize", "Level", "MemOp", "InveptKind",
    "EptEntry", "TranslateRequest", "TranslateResponse", "MemRequest", "MemResponse",
    "InveptRequest", "check_maxphyaddr", "TAG_BITS", "PerfCounters", "PERF_EVENTS",
    "WalkStart", "pending_layout", "fill_layout",
    "LA_BITS", "LinearOutcome", "GuestEntry", "LinearRequest", "LinearResponse",
    "GuestEptRequest", "GuestEptResponse", "VPID_BITS", "InvvpidKind", "InvvpidRequest",
    "NESTED_EVENTS", "NestedCounters", "CombinedEntry", "GuestTableEntry",
]

GPA_BITS = 48
PA_BITS = 52          # widest physical address; MAXPHYADDR masks it further
FRAME_BITS = PA_BITS - 12   # a 4K frame number, HPA[51:12]: table pointers, EPTP[51:12]
TAG_BITS = 4          # translate-port tag: up to 16 translations outstanding


def check_maxphyaddr(maxphyaddr) -> int:
    return check_int("maxphyaddr", maxphyaddr, 36, 52)


class Access(enum.Enum, shape=2):
    """The guest access being translated; its value is the qualification bit index."""
    READ = 0
    WRITE = 1
    FETCH = 2


class Outcome(enum.Enum, shape=3):
    OK = 0
    VIOLATION = 1
    MISCONFIG = 2
    BUS_ERROR = 3
    REFUSED = 4      # no valid EPTP loaded: nothing was walked


class PageSize(enum.Enum, shape=2):
    SIZE_4K = 0
    SIZE_2M = 1
    SIZE_1G = 2


class Level(enum.Enum, shape=2):
    """Paging-structure level, numbered from the leaf (PTE = 0)."""
    PTE = 0
    PDE = 1
    PDPTE = 2
    PML4E = 3


class MemOp(enum.Enum, shape=1):
    READ = 0
    CAS = 1


class InveptKind(enum.Enum, shape=1):
    SINGLE = 0
    GLOBAL = 1


EptEntry = data.StructLayout({
    "r": 1, "w": 1, "x": 1,
    "memtype": 3,
    "ipat": 1,
    "leaf": 1,          # bit 7: large page in a PDPTE/PDE
    "a": 1,
    "d": 1,
    "ux": 1,
    "ign11": 1,
    "addr": FRAME_BITS, # bits 51:12
    "ign_hi": 11,       # bits 62:52 (NetBSD keeps PVLIST/WIRED here)
    "sve": 1,
})

TranslateRequest = data.StructLayout({
    "gpa": GPA_BITS,
    "access": Access,
    "tag": TAG_BITS,    # chosen by the requester, returned with the response
})

TranslateResponse = data.StructLayout({
    "outcome": Outcome,
    "hpa": PA_BITS,
    "page_size": PageSize,
    "memtype": 3,
    "qual": 7,          # exit qualification bits 6:0 (violations only)
    "level": Level,     # where the walk stopped
    "retries": 4,       # walks restarted by a lost A/D CAS (saturating)
    "tag": TAG_BITS,    # the request's tag: responses may leave out of order
})

MemRequest = data.StructLayout({
    "op": MemOp,
    "addr": PA_BITS,    # 8-byte aligned
    "compare": 64,      # CAS: expected old value
    "data": 64,         # CAS: new value
})

MemResponse = data.StructLayout({
    "data": 64,         # READ: the word; CAS: the value found (swapped iff == compare)
    "error": 1,         # bus error: data is meaningless
})

InveptRequest = data.StructLayout({
    "kind": InveptKind,
    "tag": FRAME_BITS,  # EPTP[51:12] for single-context
})


# Performance counters, each 48 bits, wrapping.  The second column names the
# Intel perf event with the same meaning where one exists.
PERF_EVENTS = {
    "lookups":         "tlb lookups (translate requests looked up, replays included)",
    "hits_4k":         "dtlb_load_misses.stlb_hit_4k",
    "hits_2m":         "dtlb_load_misses.stlb_hit_2m",
    "hits_1g":         "dtlb_load_misses.stlb_hit_1g (no Intel event; by analogy)",
    "misses":          "dtlb_load_misses.miss_causes_a_walk",
    "merged":          "misses parked behind a walk to the same page (no walk of their own)",
    "dropped":         "TLB hits dropped: permission or D missing for the access",
    "walks":           "walks started (dtlb_load_misses.walk_pending starts)",
    "walks_completed": "dtlb_load_misses.walk_completed",
    "walk_cycles":     "ept.walk_pending (walker-busy cycles, summed over walkers)",
    "psc_hits_pml4e":  "walks that skipped the PML4E read (PML4E cache hit)",
    "psc_hits_pdpte":  "walks that skipped to the PDE (PDPTE cache hit)",
    "psc_hits_pde":    "walks that skipped to the PTE (PDE cache hit)",
    "mem_reads":       "page_walker_loads (entry reads issued to memory)",
    "mem_cas":         "A/D compare-and-swaps issued",
    "cas_retries":     "walks restarted after a lost A/D CAS",
    "invepts":         "tlb_flush.stlb_any (INVEPTs received)",
}

PerfCounters = data.StructLayout({name: 48 for name in PERF_EVENTS})


# -- the page-walk unit's own bundles (hw.top, hw.miss_dispatch) ------------------------

WalkStart = data.StructLayout({
    # where a walk starts: the PML4E with the PML4 and perms 0b111 for a full walk, or a
    # lower level from a paging-structure cache hit (its next table, its R/W/X so far)
    "level": Level,
    "table": FRAME_BITS,
    "perms": 3,
})


def pending_layout(ctx_bits):
    """A translate request in flight (S0, S1, S2, a park slot, the replay register)."""
    return data.StructLayout({
        "gpa": GPA_BITS, "access": Access, "tag": TAG_BITS, "ctx": ctx_bits,
        "pml4": FRAME_BITS, "ad_enabled": 1, "ctx_valid": 1,
        "stale": 1,          # its context was flushed since it was taken: install nothing
    })


def fill_layout(ctx_bits):
    """What a successful walk installs in the TLB and the paging-structure caches."""
    return data.StructLayout({
        "page": GPA_BITS - 12, "ctx": ctx_bits, "size": PageSize, "hpa_page": FRAME_BITS,
        "memtype": 3, "leaf": Level, "perms": 3, "d": 1,
        "walked": 3,                                    # as Walker.walked: levels read, PDE..PML4E
        "tables": data.ArrayLayout(FRAME_BITS, 3),      # next-table frames, PDE..PML4E
        "table_perms": data.ArrayLayout(3, 3),
    })


# -- the guest page walker's bundles (hw.guest_walker; docs/nested.md) ------------------

LA_BITS = 48          # guest linear addresses (4-level paging); bits 63:48 are a sign extension


class LinearOutcome(enum.Enum, shape=3):
    """The result of one guest linear access (a 2D walk)."""
    OK = 0
    PAGE_FAULT = 1    # guest #PF: ``pf_error`` holds the error code
    VIOLATION = 2     # EPT violation: ``gpa`` and ``qual`` bits 0-11
    MISCONFIG = 3     # EPT misconfiguration: ``gpa``
    BUS_ERROR = 4     # a memory access (guest entry, A/D CAS or EPT's own) failed
    REFUSED = 5       # EPT had no valid EPTP: nothing walked


GuestEntry = data.StructLayout({
    # IA-32e 4-level guest paging entry (SDM vol. 3A tables 4-15 .. 4-20)
    "p": 1, "rw": 1, "us": 1, "pwt": 1, "pcd": 1,
    "a": 1,
    "d": 1,             # leaves only
    "ps": 1,            # PDPTE/PDE: a 1G/2M leaf; PAT in a PTE
    "g": 1,             # ignored (CR4.PGE = 0)
    "ign9": 3,
    "addr": FRAME_BITS, # bits 51:12 (bit 12 is PAT in a 2M/1G leaf)
    "ign_hi": 11,       # bits 62:52 (no protection keys)
    "xd": 1,
})

LinearRequest = data.StructLayout({
    "la": LA_BITS,      # the linear address (bits 47:0); with CR0.PG = 0 the GPA itself
    "access": Access,
    "user": 1,          # CPL 3
    "tag": TAG_BITS,    # returned with the response
})

LinearResponse = data.StructLayout({
    "outcome": LinearOutcome,
    # OK: the final GPA; VIOLATION / MISCONFIG: the GPA whose EPT translation failed
    # (a guest entry's address, or the full byte address of the final access)
    "gpa": PA_BITS,
    "hpa": PA_BITS,
    "page_size": PageSize,   # the guest page's (the EPT leaf's with CR0.PG = 0)
    "memtype": 3,            # the EPT leaf mapping the final GPA
    "pf_error": 5,           # #PF error code bits 0-4
    "qual": 12,              # EPT-violation exit qualification bits 0-11
    "retries": 4,            # 2D walks restarted by a lost guest A/D CAS (saturating)
    "tag": TAG_BITS,
})

GuestEptRequest = data.StructLayout({
    "gpa": GPA_BITS,    # bits 47:0 (a 4-level EPT uses no more)
    "access": Access,
    "paging": 1,        # a guest paging-structure access or A/D update (qual bit 8 = 0)
})

GuestEptResponse = data.StructLayout({
    "outcome": Outcome,
    "hpa": PA_BITS,
    "page_size": PageSize,
    "memtype": 3,
    "qual": 7,          # EPT exit qualification bits 6:0 (violations)
})


# -- the nested unit's caches, INVVPID and counters (hw.nested_top; docs/nested.md) -----

VPID_BITS = 16


class InvvpidKind(enum.Enum, shape=2):
    """INVVPID types (SDM vol. 3C, 31.3).  No global pages are modelled, so
    SINGLE_KEEP_GLOBAL acts as SINGLE."""
    ADDRESS = 0
    SINGLE = 1
    ALL = 2
    SINGLE_KEEP_GLOBAL = 3


InvvpidRequest = data.StructLayout({
    "kind": InvvpidKind,
    "vpid": VPID_BITS,
    "la": 64,           # ADDRESS only; must be canonical
})

CombinedEntry = data.StructLayout({
    # a combined mapping: LA -> HPA at the smaller of the guest and EPT page sizes
    "size": PageSize,        # the size this entry covers (its key's low bits are ignored above 4K)
    "gsize": PageSize,       # the guest page size (what a hit reports)
    "hpa": FRAME_BITS,
    "gpa": FRAME_BITS,
    "memtype": 3,
    # the accesses the filling walk proved allowed: a write fill (guest D and, with
    # EPTP[6] = 1, EPT D set) allows reads and writes; a CPL-3 fill also allows CPL 0
    "read": 1, "write": 1, "fetch": 1, "user": 1,
})

GuestTableEntry = data.StructLayout({
    # a guest paging-structure cache entry: the next guest table, at its GPA and its HPA
    "gpa": FRAME_BITS,
    "hpa": FRAME_BITS,
    "us": 1, "rw": 1, "xd": 1,   # U/S and R/W ANDed, XD ORed, from the PML4E down to this entry
})

# The nested unit's counters, 48 bits each, wrapping.  Intel perf event names where one fits.
NESTED_EVENTS = {
    "linear_lookups":        "linear requests looked up in the combined TLB (refusals excluded)",
    "ctlb_hits":             "dtlb_load_misses.stlb_hit (combined-TLB hits)",
    "ctlb_misses":           "dtlb_load_misses.miss_causes_a_walk (combined-TLB misses, 2D walks)",
    "guest_walks":           "2D walks started (dtlb_load_misses.walk_pending starts)",
    "guest_walks_completed": "dtlb_load_misses.walk_completed (2D walks answered OK)",
    "gpsc_hits_pml4e":       "2D walks that started at the PDPTE (guest PML4E cache hit)",
    "gpsc_hits_pdpte":       "2D walks that started at the PDE (guest PDPTE cache hit)",
    "gpsc_hits_pde":         "2D walks that started at the PTE (guest PDE cache hit)",
    "guest_mem_reads":       "page_walker_loads of guest entries",
    "guest_mem_cas":         "guest A/D compare-and-swaps issued",
    "ept_lookups":           "EPT translations asked by the guest walkers",
    "ept_walks":             "ept.walk_pending starts for the guest walkers' EPT translations",
    "guest_cas_retries":     "2D walks restarted after a lost guest A/D CAS",
    "invvpids":              "tlb_flush.stlb_any by INVVPID (taken, refused ones included)",
    "cr3_loads":             "tlb_flush.dtlb_thread by MOV to CR3",
}

NestedCounters = data.StructLayout({name: 48 for name in NESTED_EVENTS})
