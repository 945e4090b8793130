"""The scoreboard: every RTL response against the golden model's reference walk.

Memory may change while a translation is in flight (the host pmap runs
between cycles).  The scoreboard therefore keeps a history of every store
(sequence-numbered by :class:`MemoryHistory`) and accepts a response if it
equals a reference walk in which every entry read holds a value it had
during the request's lifetime (from the request handshake to the response).
A successful translation may also come from the TLB or paging-structure
caches, so for it the window opens at the last INVEPT covering the context
(docs/ept.md: "any translation valid since the last covering
INVEPT").  Anything else is a mismatch, reported
with GPA, access, expected, got and cycles.

A ``bus_error`` is accepted only if the DRAM model injected an error while
the request was in flight; ``REFUSED`` only if no valid EPTP was loaded.
"""

from __future__ import annotations

from bisect import bisect_right
from math import inf

from model.formats import EPT_A, EPT_D, EptConfig, Outcome
from model.physmem import PhysicalMemory
from model.walk import Translation, walk

from sim.cosim.harness import Ticket

__all__ = ["MemoryHistory", "Scoreboard", "format_result"]


class MemoryHistory:
    """Every store to a memory, numbered, so past values can be read back."""

    def __init__(self, memory: PhysicalMemory):
        self.memory = memory
        self.seq = 0
        self._log: dict[int, list[tuple[int, int, int]]] = {}   # addr -> [(seq, old, new)]
        memory.observe(self._on_store)

    def _on_store(self, addr: int, old: int, new: int, source: str) -> None:
        self.seq += 1
        h = self._log.get(addr)
        if h is None:
            self._log[addr] = [(self.seq, old, new)]
        else:
            h.append((self.seq, old, new))

    # An entry (seq, old, new) is stored at or before ``seq`` iff it sorts
    # before (seq, inf): bisect on the tuples themselves, no key function.
    def value_at(self, addr: int, seq: int) -> int:
        """The word at ``addr`` after the stores numbered up to ``seq``."""
        h = self._log.get(addr)
        if not h:
            return self.memory.peek(addr)
        i = bisect_right(h, (seq, inf))
        return h[0][1] if i == 0 else h[i - 1][2]

    def values_in(self, addr: int, lo: int, hi: int) -> list[int]:
        """Every value the word at ``addr`` held from after store ``lo`` to
        after store ``hi``, oldest first, without repeats."""
        h = self._log.get(addr)
        if not h:
            return [self.memory.peek(addr)]
        i = bisect_right(h, (lo, inf))
        values = [h[0][1] if i == 0 else h[i - 1][2]]
        for seq, _, new in h[i:]:
            if seq > hi:
                break
            if new not in values:
                values.append(new)
        return values

    def prune(self, keep_from: int) -> None:
        """Forget what no request at or after ``keep_from`` can need."""
        for addr in list(self._log):
            h = self._log[addr]
            i = bisect_right(h, (keep_from, inf))
            if i == len(h):
                del self._log[addr]       # the memory itself holds the last value
            elif i > 1:
                del h[:i - 1]

    def __len__(self) -> int:
        return sum(len(h) for h in self._log.values())


def format_result(outcome, hpa=None, page_size=None, memtype=None, qual=None) -> str:
    if outcome is None:
        return "refused"
    if outcome is Outcome.OK:
        return f"ok hpa={hpa:#x} size={page_size:#x} memtype={memtype}"
    if outcome is Outcome.VIOLATION:
        return f"violation qual={qual:#x}"
    return outcome.value


def _verdict_values(values: list[int]) -> list[int]:
    """The values of an entry that a walk can tell apart: of those equal but
    for A/D, the first (a walk's verdict ignores A/D bits, as the memo below
    relies on too: exploring the others would only repeat a candidate)."""
    seen, keep = set(), []
    for v in values:
        k = v & ~(EPT_A | EPT_D)
        if k not in seen:
            seen.add(k)
            keep.append(v)
    return keep


class Scoreboard:
    def __init__(self, history: MemoryHistory, config: EptConfig = EptConfig(), limit: int = 50):
        self.history = history
        self.config = config
        self.checked = 0
        self.failed = 0
        self.mismatches: list[str] = []      # the first ``limit`` reports
        self.limit = limit
        self.alternatives_used = 0    # responses matching a state other than the first
        # Reference walks remembered per (PML4, 4K page, access) while no store changes
        # the entries they read other than in A/D (which a walk's verdict ignores: the
        # walker's own A/D CASes and the host's A/D clears leave it as it was): most
        # checks then need no walk.  Used only when every such entry last changed
        # before the request's window opened, so every state in the window gives the
        # same verdict and the remembered walk is the only candidate.
        self._memo: dict[tuple, tuple] = {}
        self._memo_keys: dict[int, set] = {}           # entry address -> memo keys
        self._changed: dict[int, int] = {}             # entry address -> seq of its last change
        self.memo_hits = 0
        self.failed_cycles: list[int] = []   # response cycles of the mismatches (waveform markers)
        self.wave_note = None                # cycle -> where to look in the waveform
        history.memory.observe(self._forget)

    def _forget(self, addr: int, old: int, new: int, source: str) -> None:
        if not (old ^ new) & ~(EPT_A | EPT_D):
            return
        self._changed[addr] = self.history.seq
        for key in self._memo_keys.pop(addr, ()):
            self._memo.pop(key, None)

    def prune(self, keep_from: int) -> None:
        """Forget changes no request at or after store ``keep_from`` can
        tell from "never changed" (its window opens at ``keep_from`` or later)."""
        self._changed = {a: s for a, s in self._changed.items() if s > keep_from}

    def _remember(self, key, c: Translation) -> None:
        arch = c.architectural()
        if c.outcome is Outcome.OK:            # keep the page, add each GPA's offset back
            arch = (arch[0], c.hpa & ~(c.page_size - 1)) + arch[2:]
        addrs = tuple(s.addr for s in c.steps)
        self._memo[key] = (arch, addrs)
        for a in addrs:
            self._memo_keys.setdefault(a, set()).add(key)

    def _remembered(self, key, t: Ticket, lo: int):
        m = self._memo.get(key)
        if m is None:
            return None
        arch, addrs = m
        if any(self._changed.get(a, 0) > lo for a in addrs):
            return None
        if arch[0] is Outcome.OK:
            return (arch[0], arch[1] | (t.gpa & (arch[2] - 1))) + arch[2:]
        return arch

    def candidates(self, t: Ticket, *, cached: bool = False, limit: int = 256) -> list[Translation]:
        """Reference walks for every memory state the request could have seen.

        Each entry the walk reads may hold any value it had in the window
        (values differing only in A/D count once: they give the same walk):
        from the request handshake (or, with ``cached``, from the last INVEPT
        covering the context: a TLB or paging-structure cache may keep what
        it saw since) to the response.  Entries are chosen independently,
        because a walk reads them at different times and a cached upper
        entry may be older than the entries below it.
        """
        return list(self.iter_candidates(t, cached=cached, limit=limit))

    def iter_candidates(self, t: Ticket, *, cached: bool = False, limit: int = 256):
        """:meth:`candidates` one at a time, in the same order, so a check can
        stop at the first match (each is a whole reference walk)."""
        h = self.history
        lo = t.seq_cache if cached else t.seq_start
        hi = t.seq_end
        found = 0

        def explore(fixed: dict[int, int]):
            nonlocal found
            branches = []       # (entry, its values, what was fixed before it), as met

            def read(addr: int) -> int:
                if addr not in fixed:
                    values = h.values_in(addr, lo, hi)
                    if len(values) > 1:
                        values = _verdict_values(values)
                        if len(values) > 1:
                            branches.append((addr, values, dict(fixed)))
                    fixed[addr] = values[0]
                return fixed[addr]
            # The walk takes the first value wherever an entry held several: that
            # is the first candidate of the depth-first order (oldest values
            # first); then every other value, the entry met last varying fastest.
            # (One walk per candidate: none is started only to find a branch.)
            result = walk(read, t.eptp, t.gpa, t.access, self.config)
            if branches and found >= limit:
                return
            found += 1
            yield result
            for addr, values, before in reversed(branches):
                for v in values[1:]:
                    if found >= limit:
                        return
                    yield from explore({**before, addr: v})

        return explore({})

    def check(self, t: Ticket) -> bool:
        self.checked += 1
        if t.refused or t.eptp is None:
            ok = t.refused and t.eptp is None
            expected = "refused" if t.eptp is None else "a walk (a valid EPTP was loaded)"
        elif t.outcome is Outcome.BUS_ERROR:
            ok = t.errors_seen > 0
            expected = "no bus error (none was injected)"
        else:
            # a success may come from a cache; a fault is always decided by memory
            got = t.architectural()
            cached = t.outcome is Outcome.OK
            lo = t.seq_cache if cached else t.seq_start
            key = (t.eptp.pml4_pa, t.gpa >> 12, t.access)
            known = self._remembered(key, t, lo)
            cands, ok = [], False
            if known is not None and known == got:
                ok = True                        # the only candidate: no walk needed
                self.memo_hits += 1
            else:
                for c in self.iter_candidates(t, cached=cached):
                    cands.append(c)
                    if c.architectural() == got:     # the rest cannot change the verdict
                        ok = True
                        break
                first = cands[0]
                if all(self._changed.get(s.addr, 0) <= lo for s in first.steps):
                    self._remember(key, first)       # it is the current state too
            if ok and cands and cands[0].architectural() != got:
                self.alternatives_used += 1
            expected = None
            if not ok:                 # every candidate was walked: name them all
                expected = " or ".join(dict.fromkeys(format_result(*c.architectural()) for c in cands))
                if len(cands) == 1 and cands[0].reason:
                    expected += f" ({cands[0].reason})"
        if not ok:
            self.failed += 1
            msg = (f"cycle {t.answered}: GPA {t.gpa:#x} {t.access.name.lower()}: "
                   f"expected {expected}, got {format_result(*t.architectural()) if not t.refused else 'refused'} "
                   f"(request taken at cycle {t.accepted})")
            if self.wave_note is not None:
                msg += "; " + self.wave_note(t.answered)
            if len(self.failed_cycles) < self.limit:
                self.failed_cycles.append(t.answered)
            if len(self.mismatches) < self.limit:
                self.mismatches.append(msg)
        return ok
