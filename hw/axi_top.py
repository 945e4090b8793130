"""The page-walk unit for SoC integration: AXI4 memory master, AXI4-Lite CSRs.

::

                    +------------------------- EptWalkerAxi -------------------------+
  translate_req  -->|--> PageWalkUnit --mem_req/mem_resp--> AxiMemoryMaster --axi---|--> mem (AXI4 master)
  translate_resp <--|<--     ^  |                                                     |
                    |        |  +-- eptp_valid/error, invept_count, counters --+     |
                    |  eptp_value/eptp_load, invept                           v     |
  csr (AXI4-Lite) ->|------------------------------------------------- CsrBlock      |
                    +-----------------------------------------------------------------+

The translate streams are the unit's own (same layouts, same in-order,
one-walk-at-a-time promise); memory latency is the AXI round trip plus the
adapter's two registered cycles per read (see ``hw.axi_master``), and each A/D
update is an exclusive read/write pair.  Software loads the EPTP and issues
INVEPT through the CSRs (``hw.csr`` register map).

Counters: field 0 is ``axi_cas_retries`` (exclusive writes that lost their
reservation), then the unit's own ``counters`` fields, in order, when the unit
has them.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, AXI4Signature
from .axi_master import AxiMemoryMaster
from .csr import CsrBlock
from .entry_check import EntryCheck
from .top import PageWalkUnit, PredecodedPageWalkUnit

__all__ = ["EptWalkerAxi"]


class EptWalkerAxi(wiring.Component):
    """``PageWalkUnit(**params)`` behind an AXI4 master (``mem``) and AXI4-Lite CSRs (``csr``).

    Parameters
    ----------
    axi_addr_width : int
        The master's address width (default 52).
    axi_id_width : int
        Default 4.
    axi_max_outstanding : int
        Reads in flight on AXI (default 4).
    csr_addr_width : int
        Default 12.
    axi_cache : int
        AxCACHE of every memory access (default 0b0011: normal, non-cacheable,
        bufferable; the page tables are ordinary memory).
    axi_prot : int
        AxPROT of every memory access (default 0b011: privileged, non-secure,
        data: the walker acts for the hypervisor in the normal world; 0 would
        make its accesses secure, which a TrustZone-aware interconnect routes
        to secure memory).
    **params
        Everything else goes to :class:`~hw.top.PageWalkUnit` untouched (the
        own parameters are prefixed so they cannot shadow one of the unit's).

    Members
    -------
    translate_req : In(stream.Signature(TranslateRequest))
    translate_resp : Out(stream.Signature(TranslateResponse))
        The unit's own translate port.
    mem : Out(AXI4Signature(axi_addr_width, 64, axi_id_width))
    csr : In(AXI4LiteSignature(csr_addr_width, 32))
        The register map of :mod:`hw.csr`; counter 0 is ``axi_cas_retries``,
        then the unit's counters in order.

    Timing
    ------
    The unit's, with the memory latency of the AXI round trip plus the
    master's registered cycles (see :mod:`hw.axi_master`).
    """

    forwards_params_to = PageWalkUnit      # ``**params`` go to the unit unchanged

    def __init__(self, *, axi_addr_width=52, axi_id_width=4, axi_max_outstanding=4,
                 csr_addr_width=12, axi_cache=0b0011, axi_prot=0b011, **params):
        # the master checks each entry as it registers the read data (the walkers' decisions
        # then start from a register), with the unit's own check
        self.unit = PredecodedPageWalkUnit(**params)
        check = EntryCheck(maxphyaddr=self.unit.maxphyaddr, execute_only=self.unit.execute_only)
        self.master = AxiMemoryMaster(addr_width=axi_addr_width, id_width=axi_id_width,
                                      max_outstanding=axi_max_outstanding, cache=axi_cache,
                                      prot=axi_prot, rdata_check=check)
        fields = {"axi_cas_retries": 32}
        self.unit_counter_names = []
        for name, f in data.Layout.cast(self.unit.counters.shape()):
            if name in fields:
                raise ValueError(f"PageWalkUnit counter {name!r} clashes with the AXI counters")
            fields[name] = f.shape
            self.unit_counter_names.append(name)
        self.csr_block = CsrBlock(data.StructLayout(fields), addr_width=csr_addr_width)
        unit_members = self.unit.signature.members
        super().__init__({
            "translate_req": unit_members["translate_req"],
            "translate_resp": unit_members["translate_resp"],
            "mem": Out(AXI4Signature(self.master.addr_width, 64, self.master.id_width)),
            "csr": In(AXI4LiteSignature(csr_addr_width, 32)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        m.submodules.master = master = self.master
        m.submodules.csr = csr = self.csr_block

        wiring.connect(m, wiring.flipped(self.translate_req), unit.translate_req)
        wiring.connect(m, unit.translate_resp, wiring.flipped(self.translate_resp))
        wiring.connect(m, unit.mem_req, master.mem_req)
        wiring.connect(m, master.mem_resp, unit.mem_resp)
        m.d.comb += unit.mem_resp_verdict.eq(master.mem_resp_verdict)
        wiring.connect(m, master.axi, wiring.flipped(self.mem))
        wiring.connect(m, wiring.flipped(self.csr), csr.bus)
        wiring.connect(m, csr.invept, unit.invept)
        m.d.comb += [
            unit.eptp_value.eq(csr.eptp_value),
            unit.eptp_load.eq(csr.eptp_load),
            csr.eptp_valid.eq(unit.eptp_valid),
            csr.eptp_error.eq(unit.eptp_error),
            csr.counters.axi_cas_retries.eq(master.cas_retries),
        ]
        m.d.comb += [
            master.cas_retries_clear.eq(csr.counters_clear),
            csr.invept_count.eq(unit.invept_count),
            unit.counters_clear.eq(csr.counters_clear),
        ]
        for name in self.unit_counter_names:
            m.d.comb += csr.counters[name].eq(unit.counters[name])
        return m
