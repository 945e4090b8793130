"""The walkers for SoC integration: AXI4 memory master, AXI4-Lite CSRs.

Two tops, the same AXI ports and the same CSR block (``hw.csr`` register map):

* :class:`NestedWalkerAxi` (the default of ``python -m sim verilog`` and
  ``synth``): the nested unit (:class:`~hw.nested_top.NestedWalkUnit`: guest
  walkers over the page-walk unit) with its linear and GPA translate ports
  native, its guest context (CR3, CR0.PG/WP, EFER.NXE, VPID, INVVPID) in the
  CSRs' guest section;
* :class:`EptWalkerAxi`: the EPT unit alone (:class:`~hw.top.PageWalkUnit`).

::

                    +------------------------- EptWalkerAxi -------------------------+
  translate_req  -->|--> PageWalkUnit --mem_req/mem_resp--> AxiMemoryMaster --axi---|--> mem (AXI4 master)
  translate_resp <--|<--     ^  |                                                     |
                    |        |  +-- eptp_valid/error, invept_count, counters --+     |
                    |  eptp_value/eptp_load, invept                           v     |
  csr (AXI4-Lite) ->|------------------------------------------------- CsrBlock      |
                    +-----------------------------------------------------------------+

                    +------------------------ NestedWalkerAxi -----------------------+
  linear_req  ----->|--(held while a context write waits)--> NestedWalkUnit --mem--> AxiMemoryMaster --|--> mem
  linear_resp <-----|<--------------------------------------     ^  |                                 |
  translate_req --->|--------------------------------------->    |  +-- status, counters --+          |
  translate_resp <--|<---------------------------------------    |                         v          |
  csr (AXI4-Lite) ->|--- EPTP, INVEPT, CR3, GUEST_CTRL, VPID, INVVPID -------------- CsrBlock(guest)    |
                    +----------------------------------------------------------------------------------+

The translate streams are the units' own (same layouts and ordering
promises); memory latency is the AXI round trip plus the adapter's two
registered cycles per read (see ``hw.axi_master``), and each A/D update is an
exclusive read/write pair.  Software loads the EPTP (and the guest context)
and issues INVEPT (INVVPID) through the CSRs.

Counters: field 0 is ``axi_cas_retries`` (exclusive writes that lost their
reservation), then the EPT unit's own ``counters`` fields, in order, then (the
nested top) the nested unit's ``nested_counters`` fields, in order.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, AXI4Signature
from .axi_master import AxiMemoryMaster
from .csr import CsrBlock
from .entry_check import EntryCheck
from .layouts import InvvpidRequest
from .nested_top import NestedWalkUnit
from .top import PageWalkUnit, PredecodedPageWalkUnit

__all__ = ["EptWalkerAxi", "NestedWalkerAxi"]


def _counter_layout(groups):
    """``axi_cas_retries`` then each (owner, layout) group's fields, in order; a name
    twice is refused.  Returns the layout and, per group, its field names."""
    fields = {"axi_cas_retries": 32}
    names = []
    for owner, layout in groups:
        mine = []
        for name, f in data.Layout.cast(layout):
            if name in fields:
                raise ValueError(f"{owner} counter {name!r} clashes with another counter of the AXI top")
            fields[name] = f.shape
            mine.append(name)
        names.append(mine)
    return data.StructLayout(fields), names


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
        layout, (self.unit_counter_names,) = _counter_layout(
            [("PageWalkUnit", self.unit.counters.shape())])
        self.csr_block = CsrBlock(layout, addr_width=csr_addr_width)
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


class NestedWalkerAxi(wiring.Component):
    """``NestedWalkUnit(**params)`` behind an AXI4 master (``mem``) and AXI4-Lite CSRs (``csr``).

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
        data: the walker acts for the hypervisor in the normal world).
    **params
        Everything else goes to :class:`~hw.nested_top.NestedWalkUnit`
        untouched (and from it to :class:`~hw.top.PageWalkUnit`).

    Members
    -------
    linear_req : In(stream.Signature(LinearRequest))
    linear_resp : Out(stream.Signature(LinearResponse))
        The nested unit's linear port; a request waits (not ready) while a
        guest-context CSR write waits for the walks in flight to finish.
    translate_req : In(stream.Signature(TranslateRequest))
    translate_resp : Out(stream.Signature(TranslateResponse))
        The nested unit's GPA port (tags below those of its guest walkers).
    mem : Out(AXI4Signature(axi_addr_width, 64, axi_id_width))
        Every memory access: the EPT walkers' and the guest walkers'.
    csr : In(AXI4LiteSignature(csr_addr_width, 32))
        The register map of :mod:`hw.csr` with its guest section; counter 0 is
        ``axi_cas_retries``, then the EPT unit's counters, then the nested
        unit's, in order.

    Timing
    ------
    The nested unit's, with the memory latency of the AXI round trip plus the
    master's registered cycles (see :mod:`hw.axi_master`).  A context write
    (EPTP_HI, CR3_HI, GUEST_CTRL, VPID) acts in the first cycle with no guest
    access in flight; from the cycle its AW and W are both in until then, no
    linear request is taken.
    """

    forwards_params_to = NestedWalkUnit    # ``**params`` go to the nested unit unchanged

    def __init__(self, *, axi_addr_width=52, axi_id_width=4, axi_max_outstanding=4,
                 csr_addr_width=12, axi_cache=0b0011, axi_prot=0b011, **params):
        self.nested = NestedWalkUnit(**params)
        self.maxphyaddr = self.nested.maxphyaddr
        self.master = AxiMemoryMaster(addr_width=axi_addr_width, id_width=axi_id_width,
                                      max_outstanding=axi_max_outstanding, cache=axi_cache,
                                      prot=axi_prot)
        members = self.nested.signature.members
        layout, (self.unit_counter_names, self.nested_counter_names) = _counter_layout(
            [("PageWalkUnit", members["counters"].shape),
             ("NestedWalkUnit", members["nested_counters"].shape)])
        self.csr_block = CsrBlock(layout, addr_width=csr_addr_width, guest=True,
                                  invvpid_layout=InvvpidRequest)
        super().__init__({
            "linear_req": members["linear_req"],
            "linear_resp": members["linear_resp"],
            "translate_req": members["translate_req"],
            "translate_resp": members["translate_resp"],
            "mem": Out(AXI4Signature(self.master.addr_width, 64, self.master.id_width)),
            "csr": In(AXI4LiteSignature(csr_addr_width, 32)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.nested = nested = self.nested
        m.submodules.master = master = self.master
        m.submodules.csr = csr = self.csr_block

        # linear requests wait while a context write waits for the walks in flight
        ext = self.linear_req
        m.d.comb += [nested.linear_req.payload.eq(ext.payload),
                     nested.linear_req.valid.eq(ext.valid & ~csr.context_hold),
                     ext.ready.eq(nested.linear_req.ready & ~csr.context_hold)]
        wiring.connect(m, nested.linear_resp, wiring.flipped(self.linear_resp))
        wiring.connect(m, wiring.flipped(self.translate_req), nested.translate_req)
        wiring.connect(m, nested.translate_resp, wiring.flipped(self.translate_resp))
        wiring.connect(m, nested.mem_req, master.mem_req)
        wiring.connect(m, master.mem_resp, nested.mem_resp)
        wiring.connect(m, master.axi, wiring.flipped(self.mem))
        wiring.connect(m, wiring.flipped(self.csr), csr.bus)
        wiring.connect(m, csr.invept, nested.invept)
        m.d.comb += [
            nested.eptp_value.eq(csr.eptp_value),
            nested.eptp_load.eq(csr.eptp_load),
            csr.eptp_valid.eq(nested.eptp_valid),
            csr.eptp_error.eq(nested.eptp_error),
            csr.invept_count.eq(nested.invept_count),
            nested.cr3_value.eq(csr.cr3_value),
            nested.cr3_load.eq(csr.cr3_load),
            csr.cr3_valid.eq(nested.cr3_valid),
            csr.cr3_error.eq(nested.cr3_error),
            nested.paging.eq(csr.paging),
            nested.wp.eq(csr.wp),
            nested.nxe.eq(csr.nxe),
            csr.context_idle.eq(nested.guest_idle),
            csr.counters.axi_cas_retries.eq(master.cas_retries),
            master.cas_retries_clear.eq(csr.counters_clear),
            nested.counters_clear.eq(csr.counters_clear),
        ]
        wiring.connect(m, csr.invvpid, nested.invvpid)
        m.d.comb += [
            nested.vpid_value.eq(csr.vpid_value),
            nested.vpid_load.eq(csr.vpid_load),
            csr.vpid_valid.eq(nested.vpid_valid),
            csr.vpid_error.eq(nested.vpid_error),
            csr.invvpid_error.eq(nested.invvpid_error),
        ]
        for name in self.unit_counter_names:
            m.d.comb += csr.counters[name].eq(nested.counters[name])
        for name in self.nested_counter_names:
            m.d.comb += csr.counters[name].eq(nested.nested_counters[name])
        return m
