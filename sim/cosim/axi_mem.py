"""Behavioural AXI4 slave memory and an AXI protocol monitor (simulator processes).

:class:`AxiMemory` answers an AXI4 port (``hw.axi.AXI4Signature``, seen from
the master: pass the master's ``axi`` member) out of a
:class:`~model.physmem.PhysicalMemory` shared with the host.  It is a Python
process, not RTL: add it with ``sim.add_process(mem.process)``.

Per cycle, seeded by ``AxiMemoryConfig.seed``:

* ARREADY, AWREADY and WREADY each drop with their own stall probability, and
  while ``max_reads`` / ``max_writes`` transactions are queued;
* a read is due ``read_latency`` cycles after its AR handshake, a write
  ``write_latency`` cycles after both its AW and W have arrived; each cycle a
  due response may slip one more cycle with probability ``r_delay`` /
  ``b_delay``; responses to the port leave in order (one ID's rules, applied
  to all), RVALID/BVALID then held until RREADY/BREADY;
* the access takes effect atomically the cycle its response is first shown,
  so host stores between cycles are seen whole or not at all.

Responses: SLVERR for addresses in ``error_addrs`` (and for writes, in
``write_error_addrs``; nothing is written),
DECERR for an address outside the memory, EXOKAY for an exclusive read (when
``exclusive`` is on; OKAY otherwise, meaning "no monitor") and for an
exclusive write that still holds its reservation (it then writes), OKAY for an
exclusive write that lost it (it writes nothing) and for normal accesses.

The exclusive monitor keeps one reservation per ID, set by an exclusive read
and cleared by any store to that word by anyone: the master's own writes, and
stores made directly to the ``PhysicalMemory`` (it observes the memory).

Hooks for tests: ``hooks`` are called with the cycle number before each
cycle; ``on_exclusive_read`` callbacks with ``(addr, value)`` right after an
exclusive read took effect, which is where "another agent" can store to the
word between the exclusive read and the exclusive write.

:class:`AxiProtocolMonitor` samples every channel of an AXI4 or AXI4-Lite port
at each edge and records a violation when a VALID drops before its READY or a
payload changes while VALID and not READY.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

from hw.axi import Burst, Resp
from hw.params import check_int
from model.physmem import MemoryAccessError, PhysicalMemory

__all__ = ["AxiMemoryConfig", "AxiMemory", "AxiProtocolMonitor"]

_MASK64 = (1 << 64) - 1


@dataclass
class AxiMemoryConfig:
    read_latency: int = 4
    write_latency: int = 4
    ar_stall: float = 0.0
    aw_stall: float = 0.0
    w_stall: float = 0.0
    r_delay: float = 0.0
    b_delay: float = 0.0
    max_reads: int = 8
    max_writes: int = 4
    error_addrs: frozenset = frozenset()        # SLVERR on any access
    write_error_addrs: frozenset = frozenset()  # SLVERR on writes only
    exclusive: bool = True
    seed: int = 1

    def validate(self) -> None:
        for name in ("read_latency", "write_latency"):
            check_int(f"AXI memory {name}", getattr(self, name), 1, 10000)
        for name in ("max_reads", "max_writes"):
            check_int(f"AXI memory {name}", getattr(self, name), 1, 256)
        for name in ("ar_stall", "aw_stall", "w_stall", "r_delay", "b_delay"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"AXI memory {name} must be in [0, 1), not {v!r}")


@dataclass
class _Txn:
    kind: str                 # "read" | "write"
    id: int
    addr: int
    lock: bool
    data: int = 0             # write data / read result
    strb: int = 0xFF
    due: int = 0
    done: bool = False
    resp: Resp = Resp.OKAY


class AxiMemory:
    """The slave side of ``port`` over ``memory`` (see module docstring)."""

    def __init__(self, memory: PhysicalMemory, port, config: AxiMemoryConfig | None = None):
        self.memory = memory
        self.port = port
        self.config = config or AxiMemoryConfig()
        self.config.validate()
        if len(port.wdata) != 64:
            raise ValueError(f"AxiMemory models a 64-bit data bus, not {len(port.wdata)}")
        self.rng = random.Random(self.config.seed)
        self.cycle = 0
        self.reservations: dict[int, int] = {}        # ID -> reserved word address
        self.hooks: list[Callable[[int], None]] = []
        self.on_exclusive_read: list[Callable[[int, int], None]] = []
        self._reads: deque[_Txn] = deque()
        self._aws: deque[_Txn] = deque()
        self._ws: deque[tuple[int, int, int]] = deque()   # (data, strb, last)
        self._writes: deque[_Txn] = deque()
        self.log: list[tuple[int, str, int, Resp]] = []    # (cycle, what, addr, resp)
        self.violations: list[str] = []                    # requests this model refuses to model
        memory.observe(self._on_store)

    # -- the exclusive monitor ------------------------------------------------
    def _on_store(self, addr: int, old: int, new: int, source: str) -> None:
        for i in [i for i, a in self.reservations.items() if a == addr]:
            del self.reservations[i]

    def count(self, what: str, resp: Resp | None = None) -> int:
        return sum(1 for _, w, _, r in self.log if w == what and (resp is None or r == resp))

    # -- accesses ---------------------------------------------------------------
    def _perform(self, t: _Txn) -> None:
        t.done = True
        c = self.config
        what = ("ex_" if t.lock else "") + t.kind
        if t.addr in c.error_addrs or (t.kind == "write" and t.addr in c.write_error_addrs):
            t.resp = Resp.SLVERR
        else:
            try:
                if t.kind == "read":
                    t.data = self.memory.read(t.addr)
                    if t.lock and c.exclusive:
                        self.reservations[t.id] = t.addr
                        t.resp = Resp.EXOKAY
                    else:
                        t.resp = Resp.OKAY
                elif t.lock and not (c.exclusive and self.reservations.get(t.id) == t.addr):
                    t.resp = Resp.OKAY        # exclusive write failed: nothing written
                else:
                    mask = 0
                    for b in range(8):
                        if t.strb >> b & 1:
                            mask |= 0xFF << (8 * b)
                    old = self.memory.peek(t.addr)
                    self.memory.write(t.addr, (old & ~mask | t.data & mask) & _MASK64, source="axi")
                    t.resp = Resp.EXOKAY if t.lock else Resp.OKAY
            except MemoryAccessError:
                t.resp = Resp.DECERR
        self.log.append((self.cycle, what, t.addr, t.resp))
        if t.kind == "read" and t.resp == Resp.EXOKAY:
            for cb in self.on_exclusive_read:
                cb(t.addr, t.data)

    def _head_due(self, q: deque, delay: float):
        """The head of ``q`` if its response is to be shown this cycle."""
        if not q or q[0].due > self.cycle:
            return None
        head = q[0]
        if not head.done:
            if delay and self.rng.random() < delay:
                head.due += 1        # slip: RVALID/BVALID not yet raised
                return None
            self._perform(head)
        return head

    # -- the per-cycle process -----------------------------------------------------
    async def process(self, ctx):
        p = self.port
        c = self.config
        rng = self.rng
        shown: dict = {}

        def drive(sig, value):
            if shown.get(id(sig)) != value:
                ctx.set(sig, value)
                shown[id(sig)] = value

        sampled = (p.arvalid, p.araddr, p.arid, p.arlock, p.arlen, p.arsize, p.arburst, p.rready,
                   p.awvalid, p.awaddr, p.awid, p.awlock, p.awlen, p.awsize, p.awburst,
                   p.wvalid, p.wdata, p.wstrb, p.wlast, p.bready)
        while True:
            for hook in self.hooks:
                hook(self.cycle)
            arready = len(self._reads) < c.max_reads and not (c.ar_stall and rng.random() < c.ar_stall)
            awready = len(self._aws) < c.max_writes and not (c.aw_stall and rng.random() < c.aw_stall)
            wready = len(self._ws) < c.max_writes and not (c.w_stall and rng.random() < c.w_stall)
            drive(p.arready, int(arready))
            drive(p.awready, int(awready))
            drive(p.wready, int(wready))
            r = self._head_due(self._reads, c.r_delay)
            drive(p.rvalid, int(r is not None))
            if r is not None:
                drive(p.rdata, r.data)
                drive(p.rresp, r.resp.value)
                drive(p.rid, r.id)
                drive(p.rlast, 1)
            b = self._head_due(self._writes, c.b_delay)
            drive(p.bvalid, int(b is not None))
            if b is not None:
                drive(p.bresp, b.resp.value)
                drive(p.bid, b.id)

            (_, _, arvalid, araddr, arid, arlock, arlen, arsize, arburst, rready,
             awvalid, awaddr, awid, awlock, awlen, awsize, awburst,
             wvalid, wdata, wstrb, wlast, bready) = await ctx.tick().sample(*sampled)

            if r is not None and rready:
                self._reads.popleft()
            if b is not None and bready:
                self._writes.popleft()
            if arvalid and arready:
                self._check_beat("AR", araddr, arlen, arsize, arburst)
                self._reads.append(_Txn("read", arid, araddr, bool(arlock),
                                        due=self.cycle + c.read_latency))
            if awvalid and awready:
                self._check_beat("AW", awaddr, awlen, awsize, awburst)
                self._aws.append(_Txn("write", awid, awaddr, bool(awlock)))
            if wvalid and wready:
                if not wlast:
                    self.violations.append(f"cycle {self.cycle}: W beat without WLAST")
                self._ws.append((wdata, wstrb, wlast))
            while self._aws and self._ws:
                t = self._aws.popleft()
                t.data, t.strb, _ = self._ws.popleft()
                t.due = self.cycle + c.write_latency
                self._writes.append(t)
            self.cycle += 1

    def _check_beat(self, ch, addr, length, size, burst):
        if length != 0 or size != 3 or Burst(burst) != Burst.INCR or addr & 7:
            self.violations.append(
                f"cycle {self.cycle}: {ch} len={length} size={size} burst={Burst(burst).name} "
                f"addr={addr:#x}: only aligned single 8-byte beats are modelled")


class AxiProtocolMonitor:
    """Checks VALID/READY handshake rules on every channel of an AXI4(-Lite) port.

    ``port`` is the interface object (either flow); ``violations`` collects
    one line per breach: VALID dropped before READY, or a payload changed
    while VALID was high and READY low.
    """

    CHANNELS = {
        "ar": ("araddr", "arid", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot"),
        "r": ("rdata", "rresp", "rid", "rlast"),
        "aw": ("awaddr", "awid", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot"),
        "w": ("wdata", "wstrb", "wlast"),
        "b": ("bresp", "bid"),
    }

    def __init__(self, port, name: str = "axi"):
        self.name = name
        self.channels = []
        members = {n for n in dir(port) if not n.startswith("_")}
        for ch, fields in self.CHANNELS.items():
            payload = [getattr(port, f) for f in fields if f in members]
            self.channels.append((ch, getattr(port, ch + "valid"), getattr(port, ch + "ready"),
                                  payload))
        self.violations: list[str] = []
        self.handshakes = {ch: 0 for ch, *_ in self.channels}
        self.stalls = {ch: 0 for ch, *_ in self.channels}     # cycles with VALID and not READY
        self.cycle = 0

    async def process(self, ctx):
        sigs = []
        for _, valid, ready, payload in self.channels:
            sigs += [valid, ready, *payload]
        prev = None
        while True:
            _, _, *vals = await ctx.tick().sample(*sigs)
            now = []
            i = 0
            for ch, _, _, payload in self.channels:
                n = 2 + len(payload)
                now.append((ch, vals[i], vals[i + 1], [int(v) if not hasattr(v, "value") else v.value
                                                        for v in vals[i + 2:i + n]]))
                i += n
            for k, (ch, valid, ready, payload) in enumerate(now):
                if valid and ready:
                    self.handshakes[ch] += 1
                elif valid:
                    self.stalls[ch] += 1
                if prev is not None:
                    _, pvalid, pready, ppayload = prev[k]
                    if pvalid and not pready:
                        if not valid:
                            self.violations.append(
                                f"{self.name} cycle {self.cycle}: {ch.upper()}VALID dropped before {ch.upper()}READY")
                        elif payload != ppayload:
                            self.violations.append(
                                f"{self.name} cycle {self.cycle}: {ch.upper()} payload changed while stalled")
            prev = now
            self.cycle += 1
