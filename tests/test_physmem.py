"""Tests of model/physmem.py: sparse DRAM of 64-bit words and the frame allocator."""

from __future__ import annotations

import numpy as np
import pytest

from model.physmem import FrameAllocator, MemoryAccessError, OutOfFrames, PhysicalMemory

M64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# PhysicalMemory
# --------------------------------------------------------------------------

@pytest.mark.parametrize("addr", [0, 8, 0xFF8, 0x1000, 0x1234_5678_9AB8, (1 << 46) - 8])
def test_untouched_reads_zero(addr):
    mem = PhysicalMemory()
    assert mem.read(addr) == 0
    assert mem.peek(addr) == 0
    assert mem.touched_frames == 0


@pytest.mark.parametrize("value", [1, 0x8000_0000_0000_0000, M64, 0x0123_4567_89AB_CDEF])
@pytest.mark.parametrize("addr", [0, 0xFF8, 0x7_0000_1008, (1 << 46) - 8])
def test_write_read_back(addr, value):
    mem = PhysicalMemory()
    mem.write(addr, value)
    assert mem.read(addr) == value
    assert type(mem.read(addr)) is int
    # neighbours untouched
    for other in (addr ^ 8, addr ^ 0x1000):
        if 0 <= other < mem.limit:
            assert mem.peek(other) == 0


def test_read_and_write_counters():
    mem = PhysicalMemory()
    mem.write(0x1000, 5)
    mem.read(0x1000)
    mem.read(0x1008)
    mem.peek(0x1000)
    assert (mem.reads, mem.writes, mem.cases) == (2, 1, 0)


@pytest.mark.parametrize("maxpa", [36, 39, 46, 52])
def test_top_of_memory(maxpa):
    mem = PhysicalMemory(maxpa)
    top = (1 << maxpa) - 8
    mem.write(top, 0xABC)
    assert mem.read(top) == 0xABC
    for bad in (1 << maxpa, (1 << maxpa) + 8, 1 << 63):
        with pytest.raises(MemoryAccessError):
            mem.read(bad)
        with pytest.raises(MemoryAccessError):
            mem.write(bad, 1)
        with pytest.raises(MemoryAccessError):
            mem.cas(bad, 0, 1)
        with pytest.raises(MemoryAccessError):
            mem.swap(bad, 1)


@pytest.mark.parametrize("addr", [1, 2, 4, 7, 0x1004, (1 << 46) - 4])
def test_misaligned_raises(addr):
    mem = PhysicalMemory()
    for op in (lambda: mem.read(addr), lambda: mem.peek(addr), lambda: mem.write(addr, 1),
               lambda: mem.cas(addr, 0, 1), lambda: mem.swap(addr, 1)):
        with pytest.raises(MemoryAccessError):
            op()
    assert mem.touched_frames == 0


@pytest.mark.parametrize("addr", [-8, -1, 8.0, "8", None, True])
def test_bad_address_raises(addr):
    mem = PhysicalMemory()
    with pytest.raises(MemoryAccessError):
        mem.read(addr)
    with pytest.raises(MemoryAccessError):
        mem.write(addr, 1)


@pytest.mark.parametrize("value", [-1, 1 << 64, (1 << 64) + 5, 1.0, "1", None, True])
def test_bad_value_raises(value):
    mem = PhysicalMemory()
    with pytest.raises(MemoryAccessError):
        mem.write(0x1000, value)
    with pytest.raises(MemoryAccessError):
        mem.swap(0x1000, value)
    with pytest.raises(MemoryAccessError):
        mem.cas(0x1000, 0, value)
    with pytest.raises(MemoryAccessError):
        mem.cas(0x1000, value, 0)
    assert mem.peek(0x1000) == 0
    assert mem.touched_frames == 0


def test_memory_access_error_is_value_error():
    assert issubclass(MemoryAccessError, ValueError)


def test_cas_success():
    mem = PhysicalMemory()
    mem.write(0x2000, 0x11)
    assert mem.cas(0x2000, 0x11, 0x22) == (True, 0x11)
    assert mem.peek(0x2000) == 0x22
    assert mem.cases == 1


def test_cas_failure_does_not_write():
    mem = PhysicalMemory()
    mem.write(0x2000, 0x11)
    assert mem.cas(0x2000, 0x10, 0x22) == (False, 0x11)
    assert mem.peek(0x2000) == 0x11
    assert mem.cases == 1


def test_cas_on_untouched_memory():
    mem = PhysicalMemory()
    assert mem.cas(0x3000, 0, M64) == (True, 0)
    assert mem.peek(0x3000) == M64
    assert mem.cas(0x5000, 1, 2) == (False, 0)
    assert mem.peek(0x5000) == 0


def test_cas_failure_not_observed():
    mem = PhysicalMemory()
    seen = []
    mem.observe(lambda *a: seen.append(a))
    mem.cas(0x2000, 5, 6, source="walker")
    assert seen == []
    mem.cas(0x2000, 0, 6, source="walker")
    assert seen == [(0x2000, 0, 6, "walker")]


def test_swap_returns_old():
    mem = PhysicalMemory()
    assert mem.swap(0x4000, 7) == 0
    assert mem.swap(0x4000, 9) == 7
    assert mem.swap(0x4000, 0) == 9
    assert mem.peek(0x4000) == 0


def test_observers_see_every_store():
    mem = PhysicalMemory()
    seen = []
    cb = lambda a, o, n, s: seen.append((a, o, n, s))  # noqa: E731
    mem.observe(cb)
    mem.write(0x1000, 1)
    mem.write(0x1000, 3, source="pmap")
    mem.swap(0x1000, 4, source="pmap")
    mem.cas(0x1000, 4, 5, source="walker")
    mem.write(0x9000, 0)                      # store of 0 to untouched memory is still seen
    assert seen == [(0x1000, 0, 1, "host"), (0x1000, 1, 3, "pmap"), (0x1000, 3, 4, "pmap"),
                    (0x1000, 4, 5, "walker"), (0x9000, 0, 0, "host")]
    mem.unobserve(cb)
    mem.write(0x1000, 6)
    assert len(seen) == 5


def test_touched_frames_sparse():
    mem = PhysicalMemory(52)
    addrs = [(i * 0x1_2345_6789_A000 + 0x18) % (1 << 52) & ~7 for i in range(1, 200)]
    for i, a in enumerate(addrs):
        mem.write(a, i + 1)
    assert mem.touched_frames == len({a >> 12 for a in addrs})
    assert mem.touched_frames <= 199
    for i, a in enumerate(addrs):
        assert mem.read(a) == i + 1
    # reads and zero writes of untouched memory do not allocate
    mem.read(0x000F_0000_0000_0000)
    mem.write(0x000E_0000_0000_0000, 0)
    assert mem.touched_frames == len({a >> 12 for a in addrs})


def test_two_words_same_frame_one_frame():
    mem = PhysicalMemory()
    mem.write(0x5000, 1)
    mem.write(0x5FF8, 2)
    assert mem.touched_frames == 1
    assert list(mem.nonzero_words()) == [(0x5000, 1), (0x5FF8, 2)]


def test_nonzero_words_in_order():
    mem = PhysicalMemory()
    for a, v in [(0x9000, 3), (0x1008, 1), (0x1000, 2), (0x9008, 0)]:
        mem.write(a, v)
    assert list(mem.nonzero_words()) == [(0x1000, 2), (0x1008, 1), (0x9000, 3)]


def test_zero_frame_and_read_frame():
    mem = PhysicalMemory()
    mem.write(0x7000, 1)
    mem.write(0x7FF8, 2)
    f = mem.read_frame(0x7000)
    assert f.dtype == np.uint64 and len(f) == 512
    assert int(f[0]) == 1 and int(f[511]) == 2
    f[0] = 99                              # a copy
    assert mem.peek(0x7000) == 1
    seen = []
    mem.observe(lambda *a: seen.append(a))
    mem.zero_frame(0x7000)
    assert mem.peek(0x7000) == 0 and mem.peek(0x7FF8) == 0
    assert mem.touched_frames == 0
    assert sorted(seen) == [(0x7000, 1, 0, "host"), (0x7FF8, 2, 0, "host")]
    with pytest.raises(MemoryAccessError):
        mem.zero_frame(0x7008)
    assert not mem.read_frame(0x8000).any()


def test_watch_frames_sees_each_frame_storage():
    """A watcher gets every frame's live storage (existing ones at once) and
    hears when one is dropped: enough to mirror the contents outside Python."""
    mem = PhysicalMemory()
    mem.write(0x3000, 5)
    mirror = {}

    def watch(fn, words):
        if words is None:
            del mirror[fn]
        else:
            mirror[fn] = words
    mem.watch_frames(watch)
    assert set(mirror) == {3}
    mem.write(0x5008, 7)
    mem.cas(0x3000, 5, 6)
    mem.swap(0x5010, 8)
    mem.write(0x9000, 0)                  # a zero store to an untouched frame creates none
    assert set(mirror) == {3, 5}
    for a in (0x3000, 0x5008, 0x5010, 0x5018):
        assert int(mirror[a >> 12][(a & 0xFFF) >> 3]) == mem.peek(a)
    mem.zero_frame(0x5000)
    assert set(mirror) == {3}
    mem.write(0x5000, 9)                  # a new storage for the same frame
    assert int(mirror[5][0]) == 9
    mem.unwatch_frames(watch)
    mem.zero_frame(0x3000)
    assert set(mirror) == {3, 5}


# --------------------------------------------------------------------------
# FrameAllocator
# --------------------------------------------------------------------------

def test_alloc_lowest_first_and_zeroes():
    mem = PhysicalMemory()
    base = 0x10_0000
    mem.write(base + 0x1010, 0xDEAD)           # junk in the second frame
    fa = FrameAllocator(mem, base, 4)
    a = fa.alloc()
    b = fa.alloc()
    assert (a, b) == (base, base + 0x1000)
    assert mem.peek(base + 0x1010) == 0
    assert fa.allocated_frames == 2 and fa.free_frames == 2
    assert fa.allocated() == {base, base + 0x1000}


def test_alloc_without_zero_keeps_contents():
    mem = PhysicalMemory()
    mem.write(0x10_0008, 5)
    fa = FrameAllocator(mem, 0x10_0000, 2)
    assert fa.alloc(zero=False) == 0x10_0000
    assert mem.peek(0x10_0008) == 5


def test_free_then_lowest_reused():
    mem = PhysicalMemory()
    fa = FrameAllocator(mem, 0x20_0000, 4)
    frames = [fa.alloc() for _ in range(4)]
    fa.free(frames[2])
    fa.free(frames[0])
    assert fa.alloc() == frames[0]
    assert fa.alloc() == frames[2]


def test_out_of_frames():
    mem = PhysicalMemory()
    fa = FrameAllocator(mem, 0x20_0000, 2)
    fa.alloc()
    fa.alloc()
    with pytest.raises(OutOfFrames):
        fa.alloc()
    assert fa.free_frames == 0


def test_double_free_raises():
    mem = PhysicalMemory()
    fa = FrameAllocator(mem, 0x20_0000, 2)
    a = fa.alloc()
    fa.free(a)
    with pytest.raises(ValueError):
        fa.free(a)
    b = fa.alloc()
    assert b == a
    with pytest.raises(ValueError):
        fa.free(0x20_1000)                # never allocated


@pytest.mark.parametrize("pa", [0x1F_F000, 0x20_2000, 0x20_0008, 0, -0x1000])
def test_foreign_frame_free_raises(pa):
    mem = PhysicalMemory()
    fa = FrameAllocator(mem, 0x20_0000, 2)
    fa.alloc()
    fa.alloc()
    with pytest.raises(ValueError):
        fa.free(pa)
    assert fa.allocated_frames == 2


def test_contains():
    mem = PhysicalMemory()
    fa = FrameAllocator(mem, 0x20_0000, 2)
    assert 0x20_0000 in fa
    assert 0x20_1000 in fa
    assert 0x20_1FF8 in fa
    assert 0x20_2000 not in fa
    assert 0x1F_F000 not in fa


@pytest.mark.parametrize("base,count", [(0x1001, 1), (0x1000, 0), (0x1000, -1),
                                        ((1 << 46) - 0x1000, 2)])
def test_allocator_bad_range(base, count):
    with pytest.raises(ValueError):
        FrameAllocator(PhysicalMemory(), base, count)


def test_allocator_up_to_top_of_memory():
    mem = PhysicalMemory(36)
    fa = FrameAllocator(mem, (1 << 36) - 0x2000, 2)
    assert fa.alloc() == (1 << 36) - 0x2000
    assert fa.alloc() == (1 << 36) - 0x1000
