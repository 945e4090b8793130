"""The scoreboard in a second process, fed a compact log.

A machine with two cores can check while it simulates: :class:`ScoreboardProcess`
forks at construction (before the run stores anything it has not seen), and
from then on the simulating process only *logs*: every store to the memory
as ``(addr, old, new)`` (numbered, as :class:`~sim.cosim.scoreboard.MemoryHistory`
numbers them: its ``seq`` is the store sequence number the harness stamps
on tickets), every ticket to check as a tuple of the fields the check reads,
and every prune.  The log goes down a pipe in batches; the child replays the
stores on its copy of the memory (the fork's: identical at the start) under a
real ``MemoryHistory`` and :class:`~sim.cosim.scoreboard.Scoreboard`, in the
order they happened, and checks each ticket at the point of the log where the
in-process scoreboard would have: the same verdicts, the same reports, word
for word.

The verdicts are joined before the run reports (:meth:`join`, from the
backend's ``close``): ``checked``, ``failed``, ``mismatches``,
``failed_cycles`` and ``alternatives_used`` are then the child's.  Before
that, ``mismatches`` holds the reports received so far (the child sends each
as it finds it), ``failed`` their count.  A child that dies makes
:meth:`join` raise: a run cannot pass unchecked.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import traceback

from model.formats import EptConfig
from model.physmem import PhysicalMemory

from sim.cosim.harness import Ticket
from sim.cosim.scoreboard import MemoryHistory, Scoreboard

__all__ = ["ScoreboardProcess", "available"]

TICKETS_PER_BATCH = 64       # a log message every 64 tickets (~250 records here)
_LEN = struct.Struct("<Q")


def available() -> bool:
    """A second process by fork (the child starts with the parent's memory)."""
    return hasattr(os, "fork") and sys.platform != "win32"


def _ticket_record(t: Ticket) -> tuple:
    return (t.gpa, t.access, t.eptp, t.accepted, t.answered, t.seq_start, t.seq_end, t.seq_cache,
            t.outcome, t.refused, t.hpa, t.page_size, t.memtype, t.qual, t.errors_seen)


def _ticket(r: tuple) -> Ticket:
    t = Ticket(r[0], r[1], r[2])
    (t.accepted, t.answered, t.seq_start, t.seq_end, t.seq_cache, t.outcome, t.refused, t.hpa,
     t.page_size, t.memtype, t.qual, t.errors_seen) = r[3:]
    return t


def _widen(fd: int) -> None:
    """As big a pipe as an unprivileged process may have (Linux: 1 MiB, about
    a default run's whole log), so the simulating side never waits for a
    checker that is behind (on a loaded machine, say) until it joins."""
    import fcntl
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = int(f.read())
    except (OSError, ValueError):
        size = 1 << 20
    for n in (size, 1 << 20, 1 << 18):
        try:
            fcntl.fcntl(fd, setsz, n)
            return
        except OSError:
            continue


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _recv(fd: int):
    """One message, or EOFError when the other side has gone."""
    head = _read(fd, _LEN.size)
    data = None if head is None else _read(fd, _LEN.unpack(head)[0])
    return EOFError if data is None else pickle.loads(data)


class ScoreboardProcess:
    """:class:`MemoryHistory` and :class:`Scoreboard` behind one object, in a
    forked child; this side keeps only the store count and the log."""

    def __init__(self, memory: PhysicalMemory, config: EptConfig | None = None, limit: int = 50):
        config = EptConfig() if config is None else config
        self.memory = memory
        self.seq = 0
        self._log: list[tuple] = []
        self._append = self._log.append
        self._last_prune = None
        self.checked = self.failed = self.alternatives_used = self.memo_hits = 0
        self._mismatches: list[str] = []
        self.failed_cycles: list[int] = []
        self.wave_note = None               # waveform notes need the in-process scoreboard
        self.joined = False
        down_r, self._down = os.pipe()
        _widen(self._down)
        self._up, up_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                        # the child: check, then leave without cleanup
            code = 0
            try:
                os.close(self._down)
                os.close(self._up)
                _child(memory, config, limit, down_r, up_w)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self._pid = pid
        memory.observe(self._on_store)

    # -- the log (the simulating side) -------------------------------------------------------
    def _on_store(self, addr: int, old: int, new: int, source: str) -> None:
        self.seq += 1
        self._append((addr, old, new))

    def check(self, t: Ticket) -> bool:
        """Queue ``t`` for checking; the verdict comes with :meth:`join`."""
        self.checked += 1
        self._append(_ticket_record(t))
        if self.checked % TICKETS_PER_BATCH == 0:
            self._flush()
        return True

    def prune(self, keep_from: int) -> None:
        """Both of MemoryHistory.prune and Scoreboard.prune (one object: logged once)."""
        if keep_from != self._last_prune:
            self._last_prune = keep_from
            self._append((keep_from,))

    def _flush(self) -> None:
        if self._log:
            _send(self._down, self._log)
            self._log.clear()
        self._poll()

    def _poll(self) -> None:
        """Take the reports the child has sent so far (without waiting)."""
        while not self.joined and select.select([self._up], [], [], 0)[0]:
            msg = _recv(self._up)
            if msg is EOFError or msg[0] != "mismatch":
                self._final = msg
                return
            self.failed += 1
            self._mismatches.append(msg[1])
            self.failed_cycles.append(msg[2])

    @property
    def mismatches(self) -> list[str]:
        """The reports: all of them after :meth:`join`, those received so far before."""
        self._poll()
        return self._mismatches

    # -- the verdicts -------------------------------------------------------------------------
    def join(self) -> None:
        """Send the rest of the log, wait for the child's verdicts and take them."""
        if self.joined:
            return
        self.memory.unobserve(self._on_store)
        self._final = None
        try:
            self._flush()
            _send(self._down, None)
        except OSError:
            pass                            # the child is gone: said below
        os.close(self._down)
        final = self._final
        while final is None:
            msg = _recv(self._up)
            if msg is not EOFError and msg[0] == "mismatch":
                continue                    # the final verdicts carry every report again
            final = msg
        os.close(self._up)
        os.waitpid(self._pid, 0)
        self.joined = True
        if final is EOFError or final[0] != "done":
            detail = "" if final is EOFError else f":\n{final[1]}"
            raise RuntimeError(f"the scoreboard's process died before its verdicts{detail}")
        r = final[1]
        if r["checked"] != self.checked:
            raise RuntimeError(f"the scoreboard's process checked {r['checked']} of {self.checked} "
                               f"responses")
        self.failed, self._mismatches, self.failed_cycles = r["failed"], r["mismatches"], r["failed_cycles"]
        self.alternatives_used, self.memo_hits = r["alternatives_used"], r["memo_hits"]

    def __del__(self):
        if not getattr(self, "joined", True):
            try:
                os.close(self._down)
                os.close(self._up)
                os.waitpid(self._pid, 0)
            except Exception:
                pass


def _child(memory: PhysicalMemory, config: EptConfig, limit: int, rfd: int, wfd: int) -> None:
    """Replay the log on the fork's copy of the memory, checking each ticket in turn."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when the run ends
    memory._observers.clear()
    memory._frame_watchers.clear()
    history = MemoryHistory(memory)
    board = Scoreboard(history, config, limit=limit)
    store = memory._store
    try:
        while True:
            batch = _recv(rfd)
            if batch is EOFError:
                return                          # the parent went away without a verdict
            if batch is None:
                break
            for r in batch:
                n = len(r)
                if n == 3:
                    store(r[0], r[2], "replay")
                elif n == 1:
                    history.prune(r[0])
                    board.prune(r[0])
                else:
                    failed = board.failed
                    board.check(_ticket(r))
                    if board.failed > failed and len(board.mismatches) > failed:
                        _send(wfd, ("mismatch", board.mismatches[-1], board.failed_cycles[-1]))
        _send(wfd, ("done", {"checked": board.checked, "failed": board.failed,
                             "mismatches": board.mismatches, "failed_cycles": board.failed_cycles,
                             "alternatives_used": board.alternatives_used,
                             "memo_hits": board.memo_hits}))
    except BaseException:
        _send(wfd, ("error", traceback.format_exc()))
        raise
