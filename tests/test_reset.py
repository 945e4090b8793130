"""Reset in the middle of a walk (pysim): at every cycle offset of a cold
write walk with A/D updates, a one-cycle reset leaves DRAM consistent (every
entry as the host wrote it, plus only A/D bits a CAS set, never a torn or
foreign store), answers nothing for the dropped request, and the unit then
translates correctly from a fresh EPTP load."""

from model.formats import EPT_A, EPT_D, Access, EptConfig, Outcome
from model.physmem import PhysicalMemory
from sim.backends.pysim import PysimHarness
from sim.cosim.scoreboard import MemoryHistory, Scoreboard
from sim.cosim.tables import HandTables


def test_reset_at_every_offset_of_a_walk_leaves_dram_consistent():
    memory = PhysicalMemory()
    frames = iter(range(0x10_0000, 0x20_0000, 0x1000))
    tables = HandTables(memory, lambda: next(frames), ad=True)
    gpa = 0x1234_5000
    tables.map(gpa, 0x8000_0000)
    entries = sorted(a for a, _ in memory.nonzero_words())
    history = MemoryHistory(memory)
    scoreboard = Scoreboard(history, EptConfig())
    h = PysimHarness(memory, store_seq=lambda: history.seq)
    walker_stores = []
    memory.observe(lambda a, old, new, src: walker_stores.append((a, old, new)) if src == "walker" else None)
    interrupted = 0
    for offset in range(0, 56):
        # the entries without A/D, as the host would leave them after clearing
        for a in entries:
            memory.write(a, memory.peek(a) & ~(EPT_A | EPT_D), source="host")
        shadow = {a: memory.peek(a) for a in entries}
        assert h.load_eptp(tables.eptp.encode(), tables.eptp)
        h.invept("global")
        t = h.submit(gpa | 0x18, Access.WRITE)
        h.step(offset)
        in_flight = t.accepted is not None and not t.done
        h.reset()
        interrupted += in_flight
        if in_flight:
            assert not t.done                       # dropped, never answered
        assert not h.inflight and not h.pending and not h.eptp_valid
        for a in entries:                           # consistent: only A/D added
            now = memory.peek(a)
            assert (now ^ shadow[a]) & ~(EPT_A | EPT_D) == 0 and shadow[a] & ~now == 0, (offset, hex(a))
        assert not h.dram.corruptions
        # after the reset the unit works, from a fresh EPTP load
        assert h.load_eptp(tables.eptp.encode(), tables.eptp)
        again = h.translate(gpa | 0x18, Access.WRITE, limit=5_000)
        assert again.outcome is Outcome.OK and again.hpa == 0x8000_0018
        assert scoreboard.check(again), scoreboard.mismatches[-1:]
    assert h.resets == 56 and interrupted >= 30
    # resets landed between the walk's CASes too: some A/D were set, some not yet
    assert walker_stores
    h.close()
