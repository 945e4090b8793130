"""Tests of model/formats.py: EPTP encode/decode and validation, entry helpers."""

from __future__ import annotations

import dataclasses

import pytest

from model.formats import (
    EPT_A, EPT_D, EPT_IGNORE_PAT, EPT_LEAF, EPT_R, EPT_RWX, EPT_W, EPT_X,
    VALID_MEMTYPES, Access, EptConfig, Eptp, EptpError, Level, MemType,
    addr_mask, check_eptp, entry_is_leaf, entry_memtype, frame_mask, gpa_index,
    make_leaf_entry, make_table_entry, reserved_mask,
)

WL4 = 3 << 3          # EPTP[5:3] = 3: 4-level walk
GOOD = 0x0000_1234_5678_9000 | WL4 | 6


# --------------------------------------------------------------------------
# EPTP
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sss", [False, True])
@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("memtype", [0, 6])
@pytest.mark.parametrize("pa", [0, 0x1000, 0x1234_5678_9000, (1 << 46) - 0x1000])
def test_eptp_round_trip(pa, memtype, ad, sss):
    e = Eptp(pml4_pa=pa, memtype=memtype, ad_enabled=ad, sss=sss)
    v = e.encode()
    assert v & 7 == memtype
    assert (v >> 3) & 7 == 3
    assert bool(v & (1 << 6)) == ad
    assert bool(v & (1 << 7)) == sss
    assert v & ~0xFFF == pa
    d = Eptp.decode(v)
    assert d == e
    assert d.encode() == v


def test_eptp_round_trip_maxphyaddr52():
    e = Eptp(pml4_pa=(1 << 51) | 0x5000, memtype=6, ad_enabled=True)
    cfg = EptConfig(maxphyaddr=52)
    assert Eptp.decode(e.encode(), cfg) == e


def test_eptp_decode_fields():
    v = 0x0000_0012_3456_7000 | 6 | WL4 | (1 << 6)
    e = Eptp.decode(v)
    assert e.pml4_pa == 0x12_3456_7000
    assert e.memtype == 6
    assert e.ad_enabled is True
    assert e.walk_length == 4
    assert e.sss is False
    assert e.tag == 0x12_3456_7


@pytest.mark.parametrize("memtype", [1, 2, 3, 4, 5, 7])
def test_eptp_bad_memtype_refused(memtype):
    with pytest.raises(EptpError):
        Eptp.decode((GOOD & ~7) | memtype)


@pytest.mark.parametrize("memtype", [0, 6])
def test_eptp_good_memtype_accepted(memtype):
    assert Eptp.decode((GOOD & ~7) | memtype).memtype == memtype


@pytest.mark.parametrize("wl", [0, 1, 2, 4, 5, 6, 7])
def test_eptp_bad_walk_length_refused(wl):
    with pytest.raises(EptpError):
        Eptp.decode((GOOD & ~(7 << 3)) | (wl << 3))


@pytest.mark.parametrize("bit", [8, 9, 10, 11])
def test_eptp_reserved_11_8_refused(bit):
    with pytest.raises(EptpError):
        Eptp.decode(GOOD | (1 << bit))


@pytest.mark.parametrize("maxpa,bit", [(46, 46), (46, 47), (46, 51), (46, 52), (46, 63),
                                       (39, 39), (39, 45), (52, 52), (52, 63), (36, 36)])
def test_eptp_high_reserved_refused(maxpa, bit):
    v = (0x5000 | WL4 | 6) | (1 << bit)
    with pytest.raises(EptpError):
        Eptp.decode(v, EptConfig(maxphyaddr=maxpa))


@pytest.mark.parametrize("maxpa", [36, 39, 46, 52])
def test_eptp_top_address_bit_accepted(maxpa):
    v = 0x5000 | WL4 | 6 | (1 << (maxpa - 1))
    e = Eptp.decode(v, EptConfig(maxphyaddr=maxpa))
    assert e.pml4_pa == 0x5000 | (1 << (maxpa - 1))


def test_eptp_bit51_is_address_with_maxphyaddr52():
    v = GOOD | (1 << 51)
    assert Eptp.decode(v, EptConfig(maxphyaddr=52)).pml4_pa == (GOOD & ~0xFFF) | (1 << 51)
    with pytest.raises(EptpError):
        Eptp.decode(v)                      # default MAXPHYADDR 46


@pytest.mark.parametrize("value", [1.0, "0x1e", None, True, False, [GOOD], GOOD + 0.0])
def test_eptp_non_int_refused(value):
    with pytest.raises(EptpError):
        Eptp.decode(value)


@pytest.mark.parametrize("value", [-1, -GOOD, GOOD - (1 << 64), 1 << 64, (1 << 64) | GOOD, 1 << 70])
def test_eptp_out_of_64_bits_refused(value):
    with pytest.raises(EptpError):
        Eptp.decode(value)


def test_eptp_error_is_value_error():
    assert issubclass(EptpError, ValueError)


def test_eptp_bit6_is_ad_and_bit7_ignored():
    assert Eptp.decode(GOOD).ad_enabled is False
    assert Eptp.decode(GOOD | (1 << 6)).ad_enabled is True
    e7 = Eptp.decode(GOOD | (1 << 7))
    assert e7.ad_enabled is False and e7.sss is True
    assert e7.pml4_pa == Eptp.decode(GOOD).pml4_pa


def test_check_eptp_same_as_decode():
    assert Eptp.check is check_eptp or Eptp.check == check_eptp
    check_eptp(GOOD)
    with pytest.raises(EptpError):
        check_eptp(GOOD | 0x100)


# --------------------------------------------------------------------------
# Reserved masks
# --------------------------------------------------------------------------

HIGH = {46: 0x000F_C000_0000_0000, 39: 0x000F_FF80_0000_0000, 52: 0, 36: 0x000F_FFF0_0000_0000}


@pytest.mark.parametrize("maxpa", [36, 39, 46, 52])
@pytest.mark.parametrize("level,leaf,low", [
    (Level.PML4E, False, 0xF8),
    (Level.PDPTE, False, 0x78),
    (Level.PDE, False, 0x78),
    (Level.PDPTE, True, 0x3FFF_F000),
    (Level.PDE, True, 0x1F_F000),
    (Level.PTE, True, 0),
], ids=["PML4E", "PDPTE-table", "PDE-table", "PDPTE-1G", "PDE-2M", "PTE"])
def test_reserved_mask(level, leaf, low, maxpa):
    assert reserved_mask(level, leaf, maxpa) == low | HIGH[maxpa]
    assert reserved_mask(int(level), leaf, maxpa) == low | HIGH[maxpa]


@pytest.mark.parametrize("level,leaf", [(Level.PML4E, False), (Level.PDPTE, False),
                                        (Level.PDE, False), (Level.PDPTE, True),
                                        (Level.PDE, True), (Level.PTE, True)])
def test_reserved_mask_never_covers_ignored_or_rwx(level, leaf):
    ignored = EPT_RWX | EPT_A | EPT_D | (1 << 10) | (1 << 11) | (((1 << 12) - 1) << 52)
    assert reserved_mask(level, leaf, 46) & ignored == 0


def test_reserved_mask_pte_nonleaf_rejected():
    with pytest.raises(ValueError):
        reserved_mask(Level.PTE, False, 46)


# --------------------------------------------------------------------------
# EptConfig
# --------------------------------------------------------------------------

def test_eptconfig_defaults():
    c = EptConfig()
    assert c.maxphyaddr == 46 and c.execute_only is True


@pytest.mark.parametrize("maxpa", [36, 39, 46, 52])
def test_eptconfig_valid(maxpa):
    assert EptConfig(maxphyaddr=maxpa).maxphyaddr == maxpa


@pytest.mark.parametrize("maxpa", [35, 53, 0, -46, 64, 46.0, "46", True, None])
def test_eptconfig_bad_maxphyaddr(maxpa):
    with pytest.raises(ValueError):
        EptConfig(maxphyaddr=maxpa)


@pytest.mark.parametrize("xo", [1, 0, "yes", None, 1.0])
def test_eptconfig_bad_execute_only(xo):
    with pytest.raises(ValueError):
        EptConfig(execute_only=xo)


def test_eptconfig_frozen():
    c = EptConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.maxphyaddr = 39


# --------------------------------------------------------------------------
# Access, MemType, Level
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text,access", [
    ("read", Access.READ), ("READ", Access.READ), ("Write", Access.WRITE),
    ("write", Access.WRITE), ("fetch", Access.FETCH), ("FeTcH", Access.FETCH)])
def test_access_parse(text, access):
    assert Access.parse(text) is access


@pytest.mark.parametrize("text", ["", "r", "exec", "execute", "rw", "reads", " read"])
def test_access_parse_bad(text):
    with pytest.raises(ValueError):
        Access.parse(text)


@pytest.mark.parametrize("access,bit,perm", [
    (Access.READ, 1, EPT_R), (Access.WRITE, 2, EPT_W), (Access.FETCH, 4, EPT_X)])
def test_access_bits(access, bit, perm):
    assert access.qual_bit == bit
    assert access.perm_bit == perm


def test_memtypes():
    assert VALID_MEMTYPES == {0, 1, 4, 5, 6}
    assert (MemType.UC, MemType.WC, MemType.WT, MemType.WP, MemType.WB) == (0, 1, 4, 5, 6)


@pytest.mark.parametrize("level,shift,size", [
    (Level.PTE, 12, 1 << 12), (Level.PDE, 21, 1 << 21),
    (Level.PDPTE, 30, 1 << 30), (Level.PML4E, 39, 1 << 39)])
def test_level_geometry(level, shift, size):
    assert level.shift == shift
    assert level.page_size == size
    assert level.can_be_leaf == (level != Level.PML4E)


@pytest.mark.parametrize("level,lo", [(Level.PTE, 12), (Level.PDE, 21),
                                      (Level.PDPTE, 30), (Level.PML4E, 39)])
def test_gpa_index(level, lo):
    gpa = (0x1A5 << lo) | ((1 << lo) - 1) ^ (1 << (lo - 1))
    assert gpa_index(gpa, level) == 0x1A5
    assert gpa_index(gpa | (0x3 << (lo + 9)), level) == 0x1A5
    assert gpa_index((1 << 48) - 1, level) == 511
    assert gpa_index(0, level) == 0


def test_masks():
    assert addr_mask(46) == (1 << 46) - 1
    assert frame_mask(46) == ((1 << 46) - 1) & ~0xFFF
    assert frame_mask(52) == 0x000F_FFFF_FFFF_F000


# --------------------------------------------------------------------------
# Entry helpers
# --------------------------------------------------------------------------

def test_entry_memtype():
    for mt in range(8):
        assert entry_memtype((mt << 3) | EPT_RWX | EPT_IGNORE_PAT | EPT_LEAF) == mt


@pytest.mark.parametrize("level,entry,leaf", [
    (Level.PTE, 0, True), (Level.PTE, EPT_LEAF, True),
    (Level.PDE, 0, False), (Level.PDE, EPT_LEAF, True),
    (Level.PDPTE, 0, False), (Level.PDPTE, EPT_LEAF, True),
    (Level.PML4E, 0, False), (Level.PML4E, EPT_LEAF, False)])
def test_entry_is_leaf(level, entry, leaf):
    assert entry_is_leaf(entry | EPT_RWX, level) is leaf


def test_make_table_entry():
    assert make_table_entry(0x1234_5000) == 0x1234_5000 | EPT_RWX
    assert make_table_entry(0x1234_5000, EPT_R) == 0x1234_5001
    assert make_table_entry(0x1000, 0xFF) == 0x1000 | EPT_RWX     # only R/W/X taken
    with pytest.raises(ValueError):
        make_table_entry(0x1234_5008)


@pytest.mark.parametrize("level,pa", [(Level.PTE, 0x5000), (Level.PDE, 0x20_0000),
                                      (Level.PDPTE, 0x4000_0000)])
def test_make_leaf_entry(level, pa):
    e = make_leaf_entry(pa, level, EPT_R | EPT_X, MemType.WT, accessed=True, dirty=True)
    assert e & ~0xFFF == pa
    assert e & EPT_RWX == EPT_R | EPT_X
    assert entry_memtype(e) == MemType.WT
    assert e & EPT_IGNORE_PAT
    assert e & EPT_A and e & EPT_D
    assert bool(e & EPT_LEAF) == (level != Level.PTE)
    assert entry_is_leaf(e, level)
    plain = make_leaf_entry(pa, level, ignore_pat=False)
    assert not plain & (EPT_IGNORE_PAT | EPT_A | EPT_D)
    with pytest.raises(ValueError):
        make_leaf_entry(pa + 0x1000 if level != Level.PTE else pa + 8, level)


def test_make_leaf_entry_pml4e_refused():
    with pytest.raises(ValueError):
        make_leaf_entry(1 << 39, Level.PML4E)
