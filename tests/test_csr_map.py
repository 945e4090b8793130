# amaranth: UnusedElaboratable=no
"""The CSR register map cannot drift: ``hw.csr.REGISTERS`` is the table in
docs/design.md (word for word), and every offset of the block, with and without the
guest section, answers as the table says (in pysim, over AXI4-Lite)."""

import re
from pathlib import Path

import pytest
from test_axi import AxiLiteMaster

from amaranth.lib import data
from amaranth.sim import Simulator

from hw.axi import Resp
from hw.csr import COUNTER_BASE, REGISTERS, CsrBlock, Reg, register_table
from hw.layouts import InvvpidRequest
from sim.cosim.axi_mem import AxiProtocolMonitor

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
COUNTERS = data.StructLayout({"a": 48, "b": 32, "c": 64})


def test_the_design_doc_holds_the_register_map():
    text = DESIGN.read_text()
    assert register_table() in text, "docs/design.md's CSR table differs from hw.csr.register_table()"


def test_the_map_is_ordered_and_names_every_offset_of_reg():
    offsets = [r.offset for r in REGISTERS]
    assert offsets == sorted(set(offsets)) and all(o % 4 == 0 and o < COUNTER_BASE for o in offsets)
    consts = {name: value for name, value in vars(Reg).items() if re.fullmatch(r"[A-Z0-9_]+", name)}
    assert consts == {r.name: r.offset for r in REGISTERS}
    assert all(r.access in ("RO", "RW", "WO") for r in REGISTERS)


@pytest.mark.parametrize("guest", [False, True])
def test_every_offset_answers_as_the_map_says(guest):
    kwargs = {"guest": True, "invvpid_layout": InvvpidRequest} if guest else {}
    dut = CsrBlock(COUNTERS, **kwargs)
    bus = AxiLiteMaster(dut.bus, seed=4, stall=0.2)
    monitor = AxiProtocolMonitor(dut.bus, "csr")
    rows = {r.offset: r for r in REGISTERS if guest or not r.guest}
    got = {}

    async def bench(ctx):
        ctx.set(dut.invept.ready, 1)
        if guest:
            ctx.set(dut.invvpid.ready, 1)
            ctx.set(dut.context_idle, 1)
        for off in range(0, COUNTER_BASE, 4):
            first = await bus.read(ctx, off)
            w_all = await bus.write(ctx, off, 0xFFFF_FFFF)
            after_all = await bus.read(ctx, off)
            w_zero = await bus.write(ctx, off, 0)
            after_zero = await bus.read(ctx, off)
            got[off] = (first, w_all, after_all, w_zero, after_zero)
        n = len(list(COUNTERS))
        got["counters"] = [await bus.read(ctx, Reg.counter_lo(i)) for i in range(n + 1)]
        got["counter_write"] = await bus.write(ctx, Reg.counter_lo(0), 1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(monitor.process)
    sim.add_testbench(bench)
    sim.run()
    assert monitor.violations == []
    for off in range(0, COUNTER_BASE, 4):
        first, w_all, after_all, w_zero, after_zero = got[off]
        row = rows.get(off)
        if row is None:                           # a hole: SLVERR both ways
            assert first == after_all == (0, Resp.SLVERR) and w_all == w_zero == Resp.SLVERR, hex(off)
            continue
        assert first[1] == after_all[1] == after_zero[1] == Resp.OKAY, row.name
        if row.access == "RO":
            assert w_all == w_zero == Resp.SLVERR, row.name
            assert after_all == first, row.name          # a refused write changes nothing
        else:
            assert w_all == w_zero == Resp.OKAY, row.name
        if row.access == "WO":
            assert first[0] == after_all[0] == after_zero[0] == 0, row.name
        if row.access == "RW":                    # some bit written sticks, and clears again
            assert after_all[0] != 0 and after_zero[0] == 0, row.name
    n = len(list(COUNTERS))
    assert [r for _, r in got["counters"]] == [Resp.OKAY] * n + [Resp.SLVERR]
    assert got["counter_write"] == Resp.SLVERR
