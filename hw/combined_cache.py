"""A cache of combined mappings: keyed by linear-address bits, tagged by VPID and EPT context.

The nested unit uses it twice over (docs/nested.md, caching): as the
**combined TLB** (keys LA[47:12], entries :data:`~hw.layouts.CombinedEntry`
of 4K, 2M or 1G) and as the three **guest paging-structure caches** (keys
LA[47:lo] of a PML4E, PDPTE or PDE, entries
:data:`~hw.layouts.GuestTableEntry`).  Fully associative, in flip-flops.

* **Lookup** is combinational: ``lookup[p]`` presents a key, VPID and context
  and sees ``hit`` and ``data`` in the same cycle (the nested unit registers
  the answer, so a combined-TLB hit answers in one cycle).  A slot of a
  context named by ``flush_ctx`` in that cycle does not hit (its flush lands
  at the edge).
* With ``sized``, a slot's ``data.size`` says how many key bits it ignores:
  9 for 2M, 18 for 1G (the key is LA[47:12]).
* **Fill** installs at the next edge, in the slot already holding the key, else
  the first free one, else the next in round-robin order.  A fill whose
  context is being flushed, or in the cycle of an invalidation, is dropped.
* **Invalidate**: ``inv`` drops, at the next edge, the slots of one key (at
  the size ``inv_size_field`` names) and VPID (``ADDRESS``), of one VPID (``VPID``), or all (``ALL``);
  ``flush_ctx`` drops the slots of the contexts it names.
"""

from amaranth import *
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from .layouts import VPID_BITS, PageSize
from .params import check_int

__all__ = ["CombinedCache", "InvScope"]


class InvScope(enum.Enum, shape=2):
    NONE = 0
    ADDRESS = 1      # one key (at each slot's size) of one VPID
    VPID = 2         # every slot of one VPID
    ALL = 3


class CombinedCache(wiring.Component):
    """Fully associative combined-mapping cache (see the module docstring).

    Parameters
    ----------
    entries : int
        Slots, 0..64 (0: no cache; nothing ever hits).
    key_bits : int
        Width of the key (LA bits).
    data : shape-castable
        What a slot holds (with ``sized``, a layout with a ``size`` field).
    contexts : int
        EPT context ids (the EPT unit's context table).
    ports : int
        Lookup ports (the guest walkers share a guest paging-structure cache).
    sized : bool
        Slots cover 4K, 2M or 1G of a LA[47:12] key.
    inv_size_field : str
        With ``sized``: the field of ``data`` whose page size an ``ADDRESS``
        invalidation matches at (``gsize`` for the combined TLB: every piece
        of the guest page goes).
    name : str
        For errors only (``entries`` is validated under this name).

    Members
    -------
    lookup : In(Signature({key, vpid, ctx: In; hit, data: Out})).array(ports)
        Combinational.
    fill : In(Signature({valid, key, vpid, ctx, data}))
    inv : In(Signature({scope: InvScope, key, vpid}))
    flush_ctx : In(contexts)

    Timing
    ------
    A lookup answers in its own cycle; a fill and an invalidation land at the
    next edge (a lookup in the fill's cycle does not see it).
    """

    def __init__(self, *, entries, key_bits, data, contexts, ports=1, sized=False, inv_size_field="size",
                 name="cache"):
        self.entries = check_int(name, entries, 0, 64)
        self.ports = check_int("ports", ports, 1, 16)
        self.key_bits = key_bits
        self.data_layout = data
        self.sized = sized
        self.inv_size_field = inv_size_field
        self.contexts = contexts
        ctx_bits = max(1, (contexts - 1).bit_length())
        self.ctx_bits = ctx_bits
        tags = {"key": Out(key_bits), "vpid": Out(VPID_BITS), "ctx": Out(ctx_bits)}
        super().__init__({
            "lookup": In(wiring.Signature({**tags, "hit": In(1), "data": In(data)})).array(ports),
            "fill": In(wiring.Signature({"valid": Out(1), **tags, "data": Out(data)})),
            "inv": In(wiring.Signature({"scope": Out(InvScope), "key": Out(key_bits),
                                        "vpid": Out(VPID_BITS)})),
            "flush_ctx": In(contexts),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.entries
        if n == 0:
            return m
        slot_layout = data.StructLayout({"key": self.key_bits, "vpid": VPID_BITS,
                                         "ctx": self.ctx_bits, "data": self.data_layout})
        valid = Signal(n)
        slots = Array(Signal(slot_layout, name=f"slot{i}") for i in range(n))
        next_slot = Signal(range(n))

        def key_match(slot, key, size_field="size"):
            if not self.sized:
                return slot.key == key
            with_size = Signal(name=None)
            with m.Switch(getattr(slot.data, size_field)):
                with m.Case(PageSize.SIZE_1G):
                    m.d.comb += with_size.eq(slot.key[18:] == key[18:])
                with m.Case(PageSize.SIZE_2M):
                    m.d.comb += with_size.eq(slot.key[9:] == key[9:])
                with m.Default():
                    m.d.comb += with_size.eq(slot.key == key)
            return with_size

        def matches(key, vpid, ctx, name):
            v = Signal(n, name=name)
            m.d.comb += v.eq(Cat(valid[i] & key_match(slots[i], key) & (slots[i].vpid == vpid)
                                 & (slots[i].ctx == ctx) for i in range(n)))
            return v

        flushed = Signal(n)
        m.d.comb += flushed.eq(Cat(self.flush_ctx.bit_select(slots[i].ctx, 1) for i in range(n)))

        for p, port in enumerate(self.lookup):
            hits = Signal(n, name=f"port{p}_hits")
            m.d.comb += hits.eq(matches(port.key, port.vpid, port.ctx, f"port{p}_match") & ~flushed)
            m.d.comb += port.hit.eq(hits.any())
            for i in range(n):
                with m.If(hits[i]):
                    m.d.comb += port.data.eq(slots[i].data)

        inv = self.inv
        dropped = Signal(n)
        with m.Switch(inv.scope):
            with m.Case(InvScope.ADDRESS):
                # every entry of the address's *guest* page: a 2M guest page over 4K EPT
                # pages is cached as 4K pieces, and INVLPG drops all of them (SDM 4.10.4.1)
                m.d.comb += dropped.eq(Cat(key_match(slots[i], inv.key, self.inv_size_field)
                                           & (slots[i].vpid == inv.vpid) for i in range(n)))
            with m.Case(InvScope.VPID):
                m.d.comb += dropped.eq(Cat(slots[i].vpid == inv.vpid for i in range(n)))
            with m.Case(InvScope.ALL):
                m.d.comb += dropped.eq(~0)

        fill = self.fill
        same = matches(fill.key, fill.vpid, fill.ctx, "fill_match")
        where = Signal(range(n))
        m.d.comb += where.eq(next_slot)
        for i in reversed(range(n)):
            with m.If(~valid[i]):
                m.d.comb += where.eq(i)
        for i in reversed(range(n)):
            with m.If(same[i]):
                m.d.comb += where.eq(i)
        # A fill writes its slot even in the cycle of an invalidation or a flush of its
        # context, and then leaves it invalid: the invalidations (from the guest-context
        # inputs) reach only the valid bits, not the slots' write enables.
        written = Signal(n)
        killed = Signal()
        m.d.comb += killed.eq((inv.scope != InvScope.NONE) | self.flush_ctx.bit_select(fill.ctx, 1))
        with m.If(fill.valid):
            m.d.comb += written.eq((1 << where)[:n])
            m.d.sync += [slots[where].key.eq(fill.key), slots[where].vpid.eq(fill.vpid),
                         slots[where].ctx.eq(fill.ctx), slots[where].data.eq(fill.data)]
            with m.If(~same.any() & valid.all()):
                m.d.sync += next_slot.eq(Mux(next_slot == n - 1, 0, next_slot + 1))
        m.d.sync += valid.eq((valid & ~dropped & ~flushed & ~written) | Mux(killed, 0, written))
        return m
