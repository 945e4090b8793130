"""The lookup and fill protocols that the TLB arrays and the paging-structure caches share.

Both are caches keyed by (GPA bits, context id) and both follow the same
timing, so one pair of signatures describes them; each cache chooses its key
width and the layout of what it holds.

* **Lookup**: the requester presents ``key`` and ``ctx`` (and, for the TLB,
  ``access``) with ``en`` in cycle S0; ``hit`` (and ``ok``) and ``data`` are
  valid in S1, the next cycle, and hold while ``en`` stays low.
* **Fill**: ``valid`` with ``key``, ``ctx`` and ``data`` installs an entry;
  each cache says when a lookup sees it.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import Access

__all__ = ["LookupSignature", "FillSignature"]


class LookupSignature(wiring.Signature):
    """A cache lookup, seen from the requester.

    Parameters
    ----------
    key_bits : int
        Width of the key (the GPA bits the cache is indexed and tagged by).
    ctx_bits : int
        Width of the context id.
    data : shape-castable
        What a hit returns.
    access : bool
        The lookup carries the guest access, and the cache answers ``ok``
        (it holds the key and its entry allows the access).

    Members
    -------
    en : Out(1)
        S0: look ``key`` up.
    key : Out(key_bits)
    ctx : Out(ctx_bits)
    access : Out(Access)
        Only with ``access=True``.
    hit : In(1)
        S1: an entry holds the key.
    ok : In(1)
        S1, only with ``access=True``: an entry holds the key and allows the access.
    data : In(data)
        S1: the entry that hit (``ok`` with ``access=True``).
    """

    def __init__(self, key_bits, ctx_bits, data, *, access=False):
        members = {"en": Out(1), "key": Out(key_bits), "ctx": Out(ctx_bits)}
        if access:
            members["access"] = Out(Access)
        members["hit"] = In(1)
        if access:
            members["ok"] = In(1)
        members["data"] = In(data)
        super().__init__(members)


class FillSignature(wiring.Signature):
    """A cache fill, seen from the one installing.

    Parameters
    ----------
    key_bits : int
    ctx_bits : int
    data : shape-castable
        What the entry holds.

    Members
    -------
    valid : Out(1)
        Install ``data`` for (``key``, ``ctx``) at this edge.
    key : Out(key_bits)
    ctx : Out(ctx_bits)
    data : Out(data)
    """

    def __init__(self, key_bits, ctx_bits, data):
        super().__init__({"valid": Out(1), "key": Out(key_bits), "ctx": Out(ctx_bits),
                          "data": Out(data)})
