"""hw.guest_entry_check.GuestEntryCheck alone, against model.guest's reserved masks."""

import random

import pytest
from conftest import run

from hw.guest_entry_check import GuestEntryCheck
from hw.layouts import Level as HLevel
from model.guest import PG_P, PG_PS, PG_XD, entry_is_leaf, guest_reserved_mask


def _entries(seed):
    rng = random.Random(seed)
    out = [0, PG_P, PG_P | PG_PS, PG_P | PG_XD, PG_P | PG_PS | 1 << 13, PG_P | 1 << 51, PG_XD]
    for _ in range(60):
        e = rng.getrandbits(64) & rng.choice([(1 << 64) - 1, (1 << 46) - 1, 0x8000_0000_0000_0FFF])
        out.append(e | PG_P if rng.random() < 0.8 else e)
    return out


@pytest.mark.parametrize("maxphyaddr", [40, 46, 52])
def test_verdict_matches_the_golden_model(maxphyaddr):
    dut = GuestEntryCheck(maxphyaddr=maxphyaddr)
    bad = []

    async def tb(ctx):
        for e in _entries(maxphyaddr):
            for level in (1, 2, 3, 4):
                for nxe in (0, 1):
                    ctx.set(dut.entry.as_value(), e)
                    ctx.set(dut.level, HLevel(level - 1))
                    ctx.set(dut.nxe, nxe)
                    v = ctx.get(dut.verdict)
                    leaf = entry_is_leaf(e, level)
                    rsvd = bool(e & PG_P) and bool(e & guest_reserved_mask(level, leaf, maxphyaddr, bool(nxe)))
                    want = (e & 1, int(rsvd), int(leaf), e >> 2 & 1, e >> 1 & 1, (e >> 63) & nxe)
                    got = (v.present, v.reserved, v.leaf, v.us, v.rw, v.xd)
                    if got != want:
                        bad.append((hex(e), level, nxe, got, want))

    run(dut, tb)
    assert bad == []
