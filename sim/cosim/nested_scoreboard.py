"""The nested scoreboard: every linear answer against :func:`model.nested.translate_la`.

Memory may change while a linear request is in flight, and the unit's caches
(the EPT unit's TLB and paging-structure caches; the nested unit's combined
TLB and guest paging-structure caches) may keep what they saw within the
caching rules of docs/nested.md ("Caching rules").  A response is accepted iff
it equals the golden model's result (``NestedTranslation.architectural()``)
for some memory state in which **each entry read independently** holds a
value it had in its window:

- a guest paging-structure entry: from ``seq_guest`` (the later of the last
  guest-context load, MOV CR3 in this VPID, INVVPID covering (VPID, LA) and
  INVEPT covering the EP4TA; see :meth:`HarnessCore._accept_linear`) to the
  response;
- an EPT entry: from ``seq_cache`` (the last covering INVEPT) to the response.
  Each EPT translation of the 2D walk (the guest entries', the final GPA's,
  the A/D write checks') chooses its entries independently: one may come from
  the EPT TLB, the next from memory.

The model runs on overlay views (:class:`_View`): reads return the chosen
value, its compare-and-swaps land in the overlay, so the real memory is never
modified.  The guest entries and the EPT entries are told apart through
``translate_la``'s ``ept_memory`` keyword.

Then a candidate must also satisfy what cannot come from a cache:

- an ``ok`` of guest page size S: an INVVPID individual-address at any LA of
  that S-page dropped the mapping (``LinearTicket.inv_addr``): every guest
  entry from then;
- a guest #PF for a not-present or reserved-bit entry: no cache holds such an
  entry, so that entry's value is one it had from the request on;
- an EPT violation or misconfiguration: as for the GPA port (a fault is
  decided by memory), the failing EPT translation's entries are from the
  request on.

``bus_error`` is accepted only if the DRAM model injected an error while the
request was in flight; ``refused`` iff no valid EPTP, no valid VPID (a unit
with VPIDs) or, with paging on, no valid CR3 was loaded.

A memo per (EPTP, guest context, LA page, access, CPL) remembers the result
while no entry it read changed other than in A/D (which no verdict depends
on) since before the window opened: the result is then the only candidate and
no walk is needed.
"""

from __future__ import annotations

from model.formats import EPT_A, EPT_D, EptConfig
from model.guest import PF_P, PF_RSVD, PG_A, PG_D
from model.nested import LaOutcome, NestedTranslation, Stage, translate_la

from sim.cosim.harness import LinearTicket
from sim.cosim.scoreboard import MemoryHistory

__all__ = ["NestedScoreboard", "format_la_result"]

GUEST_AD = PG_A | PG_D
EPT_AD = EPT_A | EPT_D


def format_la_result(outcome, gpa=None, hpa=None, page_size=None, memtype=None, pf_error=None,
                     qual=None, *, refused=False, bus_error=False) -> str:
    if refused:
        return "refused"
    if bus_error:
        return "bus_error"
    if outcome is LaOutcome.OK:
        return f"ok gpa={gpa:#x} hpa={hpa:#x} size={page_size:#x} memtype={memtype}"
    if outcome is LaOutcome.PAGE_FAULT:
        return f"page_fault pf_error={pf_error:#x}"
    if outcome is LaOutcome.VIOLATION:
        return f"violation gpa={gpa:#x} qual={qual:#x}"
    return f"misconfig gpa={gpa:#x}"


def _got(t: LinearTicket) -> str:
    return format_la_result(*t.architectural(), refused=t.refused, bus_error=t.bus_error)


class _View:
    """One kind of entry (guest or EPT) as a candidate state shows it.

    A read returns the value chosen for its key (the newest of the window's
    values until the search fixes another); a CAS always succeeds (it
    compares with the value the walk read from this view) and is absorbed:
    it sets only A/D, which no later verdict depends on, and a later EPT
    translation reading the same entry chooses its value on its own.  EPT
    reads are keyed by (EPT translation number, address): a read in the EPT
    PML4 page starts a new translation (the model's EPT walk always starts
    there).
    """

    def __init__(self, kind: str, board: "_Search", pml4_page: int | None = None):
        self.kind = kind
        self.board = board
        self.pml4_page = pml4_page
        self.n = 0

    def __call__(self, addr: int) -> int:
        return self.read(addr)

    def read(self, addr: int) -> int:
        if self.pml4_page is None:
            key = ("g", addr)
        else:
            if addr >> 12 == self.pml4_page:
                self.n += 1
            key = ("e", self.n, addr)
        return self.board.value(key, addr)

    def cas(self, addr: int, expected: int, new: int, source: str = "walker") -> tuple[bool, int]:
        return True, expected


class _Search:
    """The depth-first search over entry values (each read independently
    in its window), one model run per candidate."""

    def __init__(self, history: MemoryHistory, lo_guest: int, lo_ept: int, hi: int):
        self.h = history
        self.lo = {"g": lo_guest, "e": lo_ept}
        self.hi = hi
        self.fixed: dict = {}
        self.branches: list = []

    def value(self, key, addr: int) -> int:
        v = self.fixed.get(key, _MISSING)
        if v is _MISSING:
            values = self.h.values_in(addr, self.lo[key[0]], self.hi)
            if len(values) > 1:
                # newest first: the state at the response is the likeliest answer (the
                # windows may open long before, at the last covering invalidation)
                values = _verdict_values(values[::-1], GUEST_AD if key[0] == "g" else EPT_AD)
                if len(values) > 1:
                    self.branches.append((key, values, dict(self.fixed)))
            v = self.fixed[key] = values[0]
        return v


_MISSING = object()


def _verdict_values(values: list[int], ad: int) -> list[int]:
    """Of values equal but for A/D, the first (no verdict depends on A/D)."""
    seen, keep = set(), []
    for v in values:
        k = v & ~ad
        if k not in seen:
            seen.add(k)
            keep.append(v)
    return keep


class NestedScoreboard:
    """Checks :class:`~sim.cosim.harness.LinearTicket` answers (see the module docstring).

    ``needs_vpid``: the unit has VPIDs (a linear request without a valid VPID
    is answered ``refused``)."""

    def __init__(self, history: MemoryHistory, config: EptConfig = EptConfig(), limit: int = 50,
                 needs_vpid: bool = False, candidate_limit: int = 256):
        self.history = history
        self.config = config
        self.needs_vpid = needs_vpid
        self.limit = limit
        self.candidate_limit = candidate_limit
        self.checked = 0
        self.failed = 0
        self.mismatches: list[str] = []
        self.failed_cycles: list[int] = []
        self.alternatives_used = 0
        self.candidates_run = 0           # model runs (memo hits need none)
        self.memo_hits = 0
        self._memo: dict[tuple, tuple] = {}
        self._memo_keys: dict[tuple, set] = {}      # ("g"|"e", addr) -> memo keys
        self._changed: dict[tuple, int] = {}        # ("g"|"e", addr) -> seq of its last change
        history.memory.observe(self._forget)

    # -- the memo ------------------------------------------------------------------
    def _forget(self, addr: int, old: int, new: int, source: str) -> None:
        diff = old ^ new
        seq = self.history.seq
        for kind, ad in (("g", GUEST_AD), ("e", EPT_AD)):
            if diff & ~ad:
                self._changed[(kind, addr)] = seq
                for key in self._memo_keys.pop((kind, addr), ()):
                    self._memo.pop(key, None)

    def prune(self, keep_from: int) -> None:
        """Forget changes no request whose windows open at ``keep_from`` or later can see."""
        self._changed = {a: s for a, s in self._changed.items() if s > keep_from}

    @staticmethod
    def _key(t: LinearTicket) -> tuple:
        return (t.eptp, t.regs, (t.la >> 12), t.access, t.user)

    @staticmethod
    def _offset_fields(c: NestedTranslation) -> tuple[bool, bool]:
        """Whether gpa and hpa carry the LA's offset in the page (those are
        remembered without it)."""
        if c.outcome is LaOutcome.OK:
            return True, True
        if c.outcome in (LaOutcome.VIOLATION, LaOutcome.MISCONFIG):
            return c.stage is Stage.FINAL, False
        return False, False

    def _remember(self, key, t: LinearTicket, c: NestedTranslation, reads: dict) -> None:
        off = t.la & 0xFFF
        og, oh = self._offset_fields(c)
        arch = list(c.architectural())
        if og:
            arch[1] -= off
        if oh:
            arch[2] -= off
        addrs = tuple({(k[0], k[-1]) for k in reads})
        self._memo[key] = (tuple(arch), og, oh, addrs)
        for a in addrs:
            self._memo_keys.setdefault(a, set()).add(key)

    def _remembered(self, key, t: LinearTicket, lo: dict):
        m = self._memo.get(key)
        if m is None:
            return None
        arch, og, oh, addrs = m
        ch = self._changed
        if any(ch.get(a, 0) > lo[a[0]] for a in addrs):
            return None
        off = t.la & 0xFFF
        arch = list(arch)
        if og:
            arch[1] += off
        if oh:
            arch[2] += off
        return tuple(arch)

    # -- candidates ------------------------------------------------------------------
    def iter_candidates(self, t: LinearTicket):
        """(result, the values chosen by key) for every state of the windows,
        the newest values first, the entry met last varying fastest."""
        lo_g, lo_e, hi = t.seq_guest, t.seq_cache, t.seq_end
        found = 0
        pml4_page = t.eptp.pml4_pa >> 12

        def explore(fixed: dict):
            nonlocal found
            s = _Search(self.history, lo_g, lo_e, hi)
            s.fixed = dict(fixed)
            r = translate_la(_View("g", s), t.eptp, t.regs, t.la, t.access, t.user, self.config,
                             ept_memory=_View("e", s, pml4_page))
            self.candidates_run += 1
            if s.branches and found >= self.candidate_limit:
                return
            found += 1
            yield r, s.fixed
            for key, values, before in reversed(s.branches):
                for v in values[1:]:
                    if found >= self.candidate_limit:
                        return
                    yield from explore({**before, key: v})

        return explore({})

    def _held(self, key, value: int, lo: int, hi: int) -> bool:
        """``value`` (but for A/D) was the entry's during (lo, hi]."""
        ad = GUEST_AD if key[0] == "g" else EPT_AD
        return any(not (v ^ value) & ~ad for v in self.history.values_in(key[-1], lo, hi))

    def _allowed(self, t: LinearTicket, c: NestedTranslation, fixed: dict) -> str | None:
        """Why candidate ``c`` cannot come from the caches (None: it can)."""
        hi = t.seq_end
        if c.outcome is LaOutcome.OK and c.page_size in t.inv_addr and t.inv_addr[c.page_size] > t.seq_guest:
            lo = t.inv_addr[c.page_size]
            for key, v in fixed.items():
                if key[0] == "g" and not self._held(key, v, lo, hi):
                    return f"guest entry {key[-1]:#x} older than the INVVPID of its page"
        elif c.outcome is LaOutcome.PAGE_FAULT and c.pf_error & (PF_RSVD | PF_P) != PF_P:
            last = c.guest_steps[-1]
            key = ("g", last.hpa)
            if key in fixed and t.seq_guest < t.seq_start and not self._held(key, fixed[key], t.seq_start, hi):
                return f"faulting guest entry {last.hpa:#x} older than the request"
        elif c.outcome in (LaOutcome.VIOLATION, LaOutcome.MISCONFIG) and t.seq_cache < t.seq_start:
            n = max((k[1] for k in fixed if k[0] == "e"), default=0)
            for key, v in fixed.items():
                if key[0] == "e" and key[1] == n and not self._held(key, v, t.seq_start, hi):
                    return f"faulting EPT entry {key[-1]:#x} older than the request"
        return None

    # -- the check ---------------------------------------------------------------------
    def _refusal_expected(self, t: LinearTicket) -> bool:
        return (t.eptp is None or t.regs is None or (self.needs_vpid and not t.vpid_valid)
                or (t.regs.paging and not t.cr3_valid))

    def check(self, t: LinearTicket) -> bool:
        self.checked += 1
        expected = None
        refuse = self._refusal_expected(t)
        if t.refused or refuse:
            ok = t.refused and refuse
            expected = "refused" if refuse else "a walk (a valid EPTP, VPID and CR3 were loaded)"
        elif t.bus_error:
            ok = t.errors_seen > 0
            expected = "no bus error (none was injected)"
        else:
            got = t.architectural()
            lo = {"g": t.seq_guest, "e": t.seq_cache}
            key = self._key(t)
            known = self._remembered(key, t, lo)
            ok = False
            firsts = []
            if known is not None and known == got:
                ok = True
                self.memo_hits += 1
            else:
                cands = []
                for c, fixed in self.iter_candidates(t):
                    why = self._allowed(t, c, fixed)
                    if not cands:
                        firsts = [(c, fixed)]
                    cands.append((c, why))
                    if why is None and c.architectural() == got:
                        ok = True
                        break
                c0, fixed0 = firsts[0]
                ch = self._changed
                if all(ch.get((k[0], k[-1]), 0) <= lo[k[0]] for k in fixed0):
                    self._remember(key, t, c0, fixed0)       # the current state too
                if ok and cands[0][0].architectural() != got:
                    self.alternatives_used += 1
                if not ok:
                    parts = []
                    for c, why in cands:
                        s = format_la_result(*c.architectural())
                        if why is not None:
                            s += f" [not from a cache: {why}]"
                        parts.append(s)
                    expected = " or ".join(dict.fromkeys(parts))
                    if len(cands) == 1 and cands[0][0].reason:
                        expected += f" ({cands[0][0].reason})"
        if not ok:
            self.failed += 1
            who = "user" if t.user else "supervisor"
            msg = (f"cycle {t.answered}: LA {t.la:#x} {t.access.name.lower()} {who}: "
                   f"expected {expected}, got {_got(t)} (request taken at cycle {t.accepted})")
            if len(self.failed_cycles) < self.limit:
                self.failed_cycles.append(t.answered)
            if len(self.mismatches) < self.limit:
                self.mismatches.append(msg)
        return ok
