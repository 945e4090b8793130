"""Host pmap operations racing walks at every cycle offset (sim/verify/races.py):
clean on both backends, and each check fails when its property is broken."""

import pytest
from rtl_util import verilator_or_skip

from model.formats import EPT_A
from model.guest import PG_A
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


# -- the nested unit: guest and host pmap operations racing 2D walks ----------------------------

from model.formats import Access  # noqa: E402
from sim.verify import races_nested  # noqa: E402
from sim.verify.races_nested import NESTED_OPS  # noqa: E402


def test_nested_races_every_op_on_pysim():
    # a write walk sets guest A/D (and EPT A/D): the op lands before the walk, inside it, and after it
    rep = run_races(RaceOptions(backend="rtl", nested=True, accesses=(Access.WRITE,), starts=("cold",),
                                offsets=(60, 300)))
    assert rep.failures == []
    assert rep.races == 2 * len(NESTED_OPS) and set(rep.by_op) == set(NESTED_OPS)
    assert rep.overlapped == len(NESTED_OPS)          # at +60 every op lands mid-walk, at +300 after it


def test_a_missing_invalidation_is_a_stale_nested_translation(monkeypatch):
    real = races_nested._World.__init__

    def no_invalidations(self, opts):
        real(self, opts)
        b = self.backend
        inv, invept = b.invvpid, b.invept
        # the races' own flushes before each race stay; the ones the operations need are dropped
        b.invvpid = lambda kind, la=None: None if kind == "address" else inv(kind, la)
        b.invept = lambda kind, eptp=None: (None if self.harness.linear_inflight or self.harness.linear_pending
                                              else invept(kind, eptp))
    monkeypatch.setattr(races_nested._World, "__init__", no_invalidations)
    rep = run_races(RaceOptions(backend="rtl", nested=True, ops=("guest_remap", "ept_data_remap"),
                                accesses=(Access.READ,), starts=("warm",), offsets=(0,)))
    stale = [f for f in rep.failures if "stale translation after the invalidation" in f]
    assert {f.split()[0] for f in stale} == {"guest_remap", "ept_data_remap"}, rep.failures


def test_a_guest_a_bit_put_back_by_the_host_is_a_resurrection(monkeypatch):
    """The guest's clear of A is a lost read-modify-write: A comes back with a plain store."""
    real = races_nested._World.__init__

    def sloppy(self, opts):
        real(self, opts)
        b, write = self.backend, self.backend.write

        def lost_rmw(addr, value):
            old = self.memory.peek(addr)
            write(addr, value)
            if self.harness.linear_inflight and old & PG_A and not value & PG_A and old & 1:
                self.memory.write(addr, value | PG_A, source="host")
        b.write = lost_rmw
    monkeypatch.setattr(races_nested._World, "__init__", sloppy)
    rep = run_races(RaceOptions(backend="rtl", nested=True, ops=("guest_clear_a",), accesses=(Access.READ,),
                                starts=("cold",), offsets=(20, 120)))
    assert any("guest A set again" in f for f in rep.failures), rep.failures


def test_races_nested_bad_input_is_one_line():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for args, word in ((["--nested", "--step", "600"], "--step"), (["--nested", "--backend", "verilator"], "nested")):
        if "verilator" in args:
            from sim.backends.base import backend_class
            if backend_class("verilator").nested:
                continue
        res = subprocess.run([sys.executable, "-m", "sim", "races", *args], capture_output=True, text=True,
                             cwd=root, timeout=120)
        assert res.returncode == 2 and res.stdout == ""
        assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr, res.stderr


def _nested_backend():
    """verilator once its backend runs the nested unit, else rtl (pysim)."""
    from sim.backends.base import BackendUnavailable, backend_class
    if backend_class("verilator").nested:
        try:
            verilator_or_skip()
            return "verilator"
        except (pytest.skip.Exception, BackendUnavailable):
            pass
    return "rtl"


@pytest.mark.slow
def test_nested_races_every_op_access_and_start():
    backend = _nested_backend()
    offsets = range(0, 320, 8 if backend == "verilator" else 20)
    rep = run_races(RaceOptions(backend=backend, nested=True, offsets=offsets))
    assert rep.failures == []
    assert rep.races == len(NESTED_OPS) * 3 * 2 * len(offsets)
    # cold walks take 160-250 cycles: the ops land inside them at the early offsets
    assert rep.overlapped > len(NESTED_OPS) * 3 * len(offsets) // 3 and rep.cas_lost > 0


def test_a_sweep_spec_runs_the_nested_fuzzer_and_races(tmp_path):
    from sim.verify.sweep_spec import load_spec
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nname = "n"\n'
                    '[[jobs]]\nname = "nf"\ncampaign = "fuzz"\nbackend = "rtl"\nseeds = [2]\nwalks = 40\n'
                    'nested = true\n'
                    '[[jobs]]\nname = "nr"\ncampaign = "races"\nbackend = "rtl"\nnested = true\nmax_offset = 300\n'
                    'step = 50\n')
    fuzz, races = load_spec(spec).jobs
    assert fuzz.command() == ["fuzz", "--backend", "rtl", "--seed", "2", "--walks", "40", "--nested"]
    assert races.command() == ["races", "--backend", "rtl", "--max-offset", "300", "--step", "50", "--nested"]
    assert races.weight > fuzz.weight > 2
