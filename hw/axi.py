"""AXI4 and AXI4-Lite signatures and the response/burst encodings.

Members are named as in the AMBA AXI spec (ARM IHI 0022), lower case, and
seen from the **master**: ``Out`` members are driven by the master (``arvalid``,
``araddr``, ``rready``...), ``In`` members by the slave (``arready``,
``rdata``, ``rresp``...).  A slave port is ``In(AXI4Signature(...))``.

Only the signals this project uses are present: no QOS, REGION or USER.
``xresp`` and ``xburst`` are shaped enums, so waveforms show names.
"""

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out
from .params import check_int

__all__ = ["Resp", "Burst", "AXI4Signature", "AXI4LiteSignature"]


class Resp(enum.Enum, shape=2):
    OKAY = 0
    EXOKAY = 1       # exclusive access succeeded (an exclusive read: the slave monitors it)
    SLVERR = 2
    DECERR = 3


class Burst(enum.Enum, shape=2):
    FIXED = 0
    INCR = 1
    WRAP = 2


def _check_width(name, value, lo, hi, pow2=False):
    return check_int(name, value, lo, hi, power_of_two=pow2)


class AXI4Signature(wiring.Signature):
    """A full AXI4 interface (five channels) with ``id_width``-bit IDs."""

    def __init__(self, addr_width, data_width, id_width):
        self.addr_width = _check_width("AXI4 addr_width", addr_width, 12, 64)
        self.data_width = _check_width("AXI4 data_width", data_width, 8, 1024, pow2=True)
        self.id_width = _check_width("AXI4 id_width", id_width, 1, 32)
        super().__init__({
            "awid": Out(id_width),
            "awaddr": Out(addr_width),
            "awlen": Out(8),
            "awsize": Out(3),
            "awburst": Out(Burst),
            "awlock": Out(1),
            "awcache": Out(4),
            "awprot": Out(3),
            "awvalid": Out(1),
            "awready": In(1),
            "wdata": Out(data_width),
            "wstrb": Out(data_width // 8),
            "wlast": Out(1),
            "wvalid": Out(1),
            "wready": In(1),
            "bid": In(id_width),
            "bresp": In(Resp),
            "bvalid": In(1),
            "bready": Out(1),
            "arid": Out(id_width),
            "araddr": Out(addr_width),
            "arlen": Out(8),
            "arsize": Out(3),
            "arburst": Out(Burst),
            "arlock": Out(1),
            "arcache": Out(4),
            "arprot": Out(3),
            "arvalid": Out(1),
            "arready": In(1),
            "rid": In(id_width),
            "rdata": In(data_width),
            "rresp": In(Resp),
            "rlast": In(1),
            "rvalid": In(1),
            "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is AXI4Signature and self.addr_width == other.addr_width
                and self.data_width == other.data_width and self.id_width == other.id_width)

    def __hash__(self):
        return hash((AXI4Signature, self.addr_width, self.data_width, self.id_width))

    def __repr__(self):
        return f"AXI4Signature({self.addr_width}, {self.data_width}, {self.id_width})"


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite: no IDs, bursts, locks or caches; ``data_width`` 32 or 64."""

    def __init__(self, addr_width, data_width):
        self.addr_width = _check_width("AXI4-Lite addr_width", addr_width, 3, 64)
        if data_width not in (32, 64) or isinstance(data_width, bool):
            raise ValueError(f"AXI4-Lite data_width must be 32 or 64, not {data_width!r}")
        self.data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width),
            "awprot": Out(3),
            "awvalid": Out(1),
            "awready": In(1),
            "wdata": Out(data_width),
            "wstrb": Out(data_width // 8),
            "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(Resp),
            "bvalid": In(1),
            "bready": Out(1),
            "araddr": Out(addr_width),
            "arprot": Out(3),
            "arvalid": Out(1),
            "arready": In(1),
            "rdata": In(data_width),
            "rresp": In(Resp),
            "rvalid": In(1),
            "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is AXI4LiteSignature and self.addr_width == other.addr_width
                and self.data_width == other.data_width)

    def __hash__(self):
        return hash((AXI4LiteSignature, self.addr_width, self.data_width))

    def __repr__(self):
        return f"AXI4LiteSignature({self.addr_width}, {self.data_width})"
