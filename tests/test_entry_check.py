"""hw.entry_check.EntryCheck alone, against model.formats' reserved masks and memory types."""

import random

import pytest
from conftest import run

from hw.entry_check import EntryCheck, reserved_masks
from hw.layouts import Level as HwLevel
from model.formats import (
    EPT_LEAF,
    EPT_MEMTYPE_SHIFT,
    EPT_R,
    EPT_W,
    EPT_X,
    VALID_MEMTYPES,
    Level,
    reserved_mask,
)

LEVELS = {HwLevel.PTE: Level.PTE, HwLevel.PDE: Level.PDE, HwLevel.PDPTE: Level.PDPTE,
          HwLevel.PML4E: Level.PML4E}


def expected(entry, level, maxphyaddr, execute_only):
    """(present, misconfigured at ``level``) from the model's rules."""
    r, w, x = bool(entry & EPT_R), bool(entry & EPT_W), bool(entry & EPT_X)
    if not (r or w or x):
        return False, False
    leaf = level == Level.PTE or (level in (Level.PDE, Level.PDPTE) and bool(entry & EPT_LEAF))
    bad = bool(entry & reserved_mask(level, leaf, maxphyaddr))
    bad |= w and not r
    bad |= x and not w and not r and not execute_only
    if leaf:
        bad |= ((entry >> EPT_MEMTYPE_SHIFT) & 7) not in VALID_MEMTYPES
    return True, bad


@pytest.mark.parametrize("maxphyaddr", [36, 46, 52])
def test_masks_are_the_models(maxphyaddr):
    masks = reserved_masks(maxphyaddr)
    assert masks["pml4e"] == reserved_mask(Level.PML4E, False, maxphyaddr)
    assert masks["table"] == reserved_mask(Level.PDE, False, maxphyaddr)
    assert masks["table"] == reserved_mask(Level.PDPTE, False, maxphyaddr)
    assert masks["leaf_1g"] == reserved_mask(Level.PDPTE, True, maxphyaddr)
    assert masks["leaf_2m"] == reserved_mask(Level.PDE, True, maxphyaddr)
    assert masks["pte"] == reserved_mask(Level.PTE, True, maxphyaddr)


def _entries(maxphyaddr, n, seed):
    rng = random.Random(seed)
    out = [0, EPT_W, EPT_X, EPT_R | EPT_W, EPT_R | (2 << EPT_MEMTYPE_SHIFT),
           EPT_R | EPT_LEAF | (6 << EPT_MEMTYPE_SHIFT) | (1 << 12),       # a 2M leaf, bit 12 set
           EPT_R | (1 << maxphyaddr) if maxphyaddr < 52 else EPT_R | (1 << 51),
           EPT_R | (1 << 3)]                                              # memtype bit in a table
    for _ in range(n):
        e = rng.getrandbits(64)
        # sparse: mostly well-formed entries with one or two bits flipped
        base = (rng.getrandbits(40) << 12) & ((1 << maxphyaddr) - 1) | rng.choice([1, 3, 4, 5, 7])
        base |= rng.choice([0, 6, 4]) << EPT_MEMTYPE_SHIFT | rng.choice([0, EPT_LEAF])
        out.append(e if rng.random() < 0.3 else base ^ (1 << rng.randrange(64)) * (rng.random() < 0.5))
    return out


@pytest.mark.parametrize("maxphyaddr,execute_only", [(46, True), (39, False), (52, True)])
def test_verdict_matches_the_model_at_every_level(maxphyaddr, execute_only):
    dut = EntryCheck(maxphyaddr=maxphyaddr, execute_only=execute_only)
    entries = _entries(maxphyaddr, 300, seed=maxphyaddr)
    wrong = []

    async def tb(ctx):
        for e in entries:
            ctx.set(dut.entry.as_value(), e)
            present = ctx.get(dut.verdict.present)
            misconfig = ctx.get(dut.verdict.misconfig)
            for hw_level, level in LEVELS.items():
                want = expected(e, level, maxphyaddr, execute_only)
                got = (bool(present), bool(misconfig >> hw_level.value & 1))
                if got != want:
                    wrong.append((hex(e), level.name, got, want))

    run(dut, tb)
    assert wrong == []
    # the cases are not all alike: both verdicts occur at every level
    kinds = {(level, expected(e, level, maxphyaddr, execute_only)) for e in entries for level in Level}
    for level in Level:
        assert {(level, (True, False)), (level, (True, True)), (level, (False, False))} <= kinds
