"""Sparse physical memory of 64-bit words, and a frame allocator.

:class:`PhysicalMemory` is the DRAM image that the pmap writes and that both
the reference walk and the RTL read.  Only touched 4K frames are stored (one
numpy ``uint64[512]`` each); untouched memory reads as zero.  Every access is
one aligned 64-bit word; :meth:`PhysicalMemory.cas` is the atomic
compare-and-swap the A/D updater and the pmap use.

Observers registered with :meth:`PhysicalMemory.observe` see every store
``(addr, old, new, source)``; the cosimulation scoreboard uses them to know
what the memory held at any moment.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .formats import PAGE_SIZE

__all__ = ["PhysicalMemory", "MemoryAccessError", "FrameAllocator", "OutOfFrames"]

WORD_MASK = (1 << 64) - 1
_WORDS = PAGE_SIZE // 8


class MemoryAccessError(ValueError):
    """A misaligned, out-of-range or malformed memory access."""


class OutOfFrames(RuntimeError):
    """The frame allocator has no free frame left."""


class PhysicalMemory:
    """Sparse 64-bit-word memory addressed by physical address."""

    def __init__(self, maxphyaddr: int = 46):
        self.maxphyaddr = maxphyaddr
        self.limit = 1 << maxphyaddr
        self._frames: dict[int, np.ndarray] = {}
        self._observers: list[Callable[[int, int, int, str], None]] = []
        self._frame_watchers: list[Callable[[int, np.ndarray | None], None]] = []
        self.reads = 0
        self.writes = 0
        self.cases = 0

    # -- checks -----------------------------------------------------------
    def _check(self, addr: int) -> None:
        if type(addr) is int and 0 <= addr < self.limit and not addr & 7:
            return                  # the common case in one test (every access checks)
        if isinstance(addr, bool) or not isinstance(addr, int):
            raise MemoryAccessError(f"address {addr!r} is not an integer")
        if not 0 <= addr < self.limit:
            raise MemoryAccessError(f"address {addr:#x} is outside physical memory "
                                    f"(MAXPHYADDR {self.maxphyaddr}, limit {self.limit:#x})")
        if addr & 7:
            raise MemoryAccessError(f"address {addr:#x} is not 8-byte aligned")

    @staticmethod
    def _check_value(value: int, what: str = "value") -> None:
        if type(value) is int and 0 <= value <= WORD_MASK:
            return                  # the common case in one test
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= WORD_MASK:
            raise MemoryAccessError(f"{what} {value!r} is not a 64-bit unsigned integer")

    # -- access -----------------------------------------------------------
    def peek(self, addr: int) -> int:
        """Read without counting (for checkers and debug dumps)."""
        self._check(addr)
        frame = self._frames.get(addr >> 12)
        return 0 if frame is None else frame.item((addr & 0xFFF) >> 3)    # a Python int

    def read(self, addr: int) -> int:
        v = self.peek(addr)
        self.reads += 1
        return v

    def _store(self, addr: int, value: int, source: str) -> int:
        fn = addr >> 12
        frame = self._frames.get(fn)
        if frame is None:
            if value == 0:
                old = 0
                for obs in self._observers:
                    obs(addr, old, value, source)
                return old
            frame = self._frames[fn] = np.zeros(_WORDS, dtype=np.uint64)
            for watcher in self._frame_watchers:
                watcher(fn, frame)
        i = (addr & 0xFFF) >> 3
        old = frame.item(i)
        frame[i] = value
        for obs in self._observers:
            obs(addr, old, value, source)
        return old

    def write(self, addr: int, value: int, source: str = "host") -> None:
        self._check(addr)
        self._check_value(value)
        self.writes += 1
        self._store(addr, value, source)

    def swap(self, addr: int, value: int, source: str = "host") -> int:
        """Atomic exchange; returns the old value (``pmap_pte_testset``)."""
        self._check(addr)
        self._check_value(value)
        self.writes += 1
        return self._store(addr, value, source)

    def cas(self, addr: int, expected: int, new: int, source: str = "host") -> tuple[bool, int]:
        """Atomic compare-and-swap.

        Stores ``new`` only if the word equals ``expected``.  Returns
        ``(swapped, observed)`` where ``observed`` is the value found.
        """
        self._check(addr)
        self._check_value(expected, "expected value")
        self._check_value(new, "new value")
        self.cases += 1
        observed = self.peek(addr)
        if observed != expected:
            return False, observed
        self._store(addr, new, source)
        return True, observed

    # -- frames -------------------------------------------------------------
    def zero_frame(self, pa: int, source: str = "host") -> None:
        self._check(pa)
        if pa % PAGE_SIZE:
            raise MemoryAccessError(f"frame address {pa:#x} is not 4K-aligned")
        frame = self._frames.get(pa >> 12)
        if frame is None:
            return
        if self._observers:
            for i in np.flatnonzero(frame).tolist():       # Python ints
                self._store(pa + 8 * i, 0, source)
        del self._frames[pa >> 12]
        for watcher in self._frame_watchers:
            watcher(pa >> 12, None)

    def read_frame(self, pa: int) -> np.ndarray:
        """A copy of the 512 words of the frame at ``pa``."""
        self._check(pa)
        frame = self._frames.get(pa >> 12)
        return np.zeros(_WORDS, dtype=np.uint64) if frame is None else frame.copy()

    def nonzero_words(self) -> Iterator[tuple[int, int]]:
        """Every non-zero word as ``(addr, value)``, in address order."""
        for fn in sorted(self._frames):
            frame = self._frames[fn]
            for i in np.flatnonzero(frame):
                yield (fn << 12) | (int(i) << 3), int(frame[i])

    @property
    def touched_frames(self) -> int:
        return len(self._frames)

    # -- observers ---------------------------------------------------------------
    def observe(self, callback: Callable[[int, int, int, str], None]) -> None:
        """Call ``callback(addr, old, new, source)`` after every store."""
        self._observers.append(callback)

    def unobserve(self, callback) -> None:
        self._observers.remove(callback)

    def watch_frames(self, callback: Callable[[int, np.ndarray | None], None]) -> None:
        """Call ``callback(frame_number, words)`` for every stored frame now and
        whenever one is created, and ``callback(frame_number, None)`` when one
        is dropped (zeroed).  ``words`` is the frame's ``uint64[512]`` storage
        itself, updated in place by every store until the frame is dropped: a
        reader outside Python (the Verilator driver) can read from it directly."""
        self._frame_watchers.append(callback)
        for fn, frame in self._frames.items():
            callback(fn, frame)

    def unwatch_frames(self, callback) -> None:
        self._frame_watchers.remove(callback)


class FrameAllocator:
    """Allocates 4K frames from ``[base, base + count * 4K)`` of a memory.

    Frames are handed out lowest-address first among the free ones, and are
    zeroed on allocation when asked (``UVM_PGA_ZERO``).  Freeing a frame that
    is not allocated is an error: it would hide a double free in the pmap.
    """

    def __init__(self, memory: PhysicalMemory, base: int, count: int):
        if base % PAGE_SIZE:
            raise ValueError(f"allocator base {base:#x} is not 4K-aligned")
        if count <= 0:
            raise ValueError(f"allocator frame count must be positive, not {count}")
        if base + count * PAGE_SIZE > memory.limit:
            raise ValueError(f"allocator range {base:#x}+{count}x4K exceeds physical memory "
                             f"(limit {memory.limit:#x})")
        self.memory = memory
        self.base = base
        self.count = count
        self._free = list(range(count - 1, -1, -1))   # a stack: pop() gives the lowest
        self._allocated: set[int] = set()

    def __contains__(self, pa: int) -> bool:
        return self.base <= pa < self.base + self.count * PAGE_SIZE

    @property
    def free_frames(self) -> int:
        return len(self._free)

    @property
    def allocated_frames(self) -> int:
        return len(self._allocated)

    def allocated(self) -> frozenset[int]:
        return frozenset(self.base + i * PAGE_SIZE for i in self._allocated)

    def alloc(self, zero: bool = True) -> int:
        if not self._free:
            raise OutOfFrames(f"no free frame in {self.base:#x}+{self.count}x4K")
        i = self._free.pop()
        self._allocated.add(i)
        pa = self.base + i * PAGE_SIZE
        if zero:
            self.memory.zero_frame(pa)
        return pa

    def free(self, pa: int) -> None:
        if pa not in self or pa % PAGE_SIZE:
            raise ValueError(f"frame {pa:#x} does not belong to this allocator")
        i = (pa - self.base) // PAGE_SIZE
        if i not in self._allocated:
            raise ValueError(f"frame {pa:#x} freed twice")
        self._allocated.remove(i)
        self._free.append(i)
