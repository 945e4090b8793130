"""Host pmap operations racing walks at every cycle offset (sim/verify/races.py):
clean on both backends, and each check fails when its property is broken."""

from rtl_util import verilator_or_skip

from model.formats import EPT_A
from model.pmap import PageDB
from sim.verify.races import OPS, RaceOptions, _World, run_races




def test_races_on_pysim_every_op_every_access(capsys):
    rep = run_races(RaceOptions(backend="rtl", offsets=range(0, 72, 18)))
    assert rep.failures == []
    assert rep.races == len(OPS) * 3 * 2 * 4
    assert set(rep.by_op) == set(OPS) and rep.overlapped > 25


def test_races_at_every_offset_on_verilator():
    verilator_or_skip()
    rep = run_races(RaceOptions(backend="verilator"))
    assert rep.failures == []
    assert rep.races == len(OPS) * 3 * 2 * 72
    # the operations really landed inside walks, and some CASes lost to the host
    assert rep.overlapped > 500 and rep.cas_lost > 10


def test_a_missing_shootdown_is_a_stale_translation(monkeypatch):
    verilator_or_skip()
    real = _World.__init__

    def no_invept(self, opts):
        real(self, opts)
        self.host.invept = lambda *a, **k: None
    monkeypatch.setattr(_World, "__init__", no_invept)
    rep = run_races(RaceOptions(backend="verilator", ops=("protect", "remove"), offsets=range(0, 40, 4)))
    assert any("stale translation after INVEPT" in f for f in rep.failures)


def test_a_bit_set_back_by_the_host_is_a_resurrection(monkeypatch):
    """A host path that puts A back with a plain store (a lost read-modify-write)."""
    verilator_or_skip()
    real = PageDB.clear_reference
    worlds = []
    real_init = _World.__init__

    def remember(self, opts):
        real_init(self, opts)
        worlds.append(self)
    monkeypatch.setattr(_World, "__init__", remember)

    def sloppy(self, pa):
        w = worlds[-1]
        page = w.host.owner[pa]
        addr = w.host.pmap._pte_addr(page)
        before = w.memory.peek(addr)
        result = real(self, pa)
        w.memory.write(addr, w.memory.peek(addr) | (before & EPT_A), source="host")
        return result
    monkeypatch.setattr(PageDB, "clear_reference", sloppy)
    rep = run_races(RaceOptions(backend="verilator", ops=("clear_reference",), offsets=range(0, 30, 5),
                                starts=("warm",)))
    assert any("set again" in f for f in rep.failures)
