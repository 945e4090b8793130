"""The response arbiter: the translate port's one output, shared by TLB hits and walkers.

Three sources answer translate requests: the skid register, the walkers (a
finished walk), and S1 (a TLB hit, or a request refused for want of an
EPTP).  S1 never waits for the port: an answer the port does not take in the
cycle S1 resolves moves into the skid register, so that the lookup pipeline
moves on whatever the port does.  The skid register has the port first, then
walker responses (lowest index first), then S1, so walks cannot starve.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import TranslateResponse

__all__ = ["ResponseArbiter", "S1AnswerSignature"]


class S1AnswerSignature(wiring.Signature):
    """S1's answer, seen from S1.

    Members
    -------
    load : Out(1)
        S1 moves on this cycle (whatever its lookup found): the skid register
        loads ``payload`` unless the port takes it now.
    answer : Out(1)
        ... and ``payload`` is an answer (a hit, or refused), not a miss.
    payload : Out(TranslateResponse)
    """

    def __init__(self):
        super().__init__({"load": Out(1), "answer": Out(1), "payload": Out(TranslateResponse)})


class ResponseArbiter(wiring.Component):
    """The skid register, the walkers' responses and S1's answer onto ``resp``.

    Parameters
    ----------
    walkers : int
        Walkers answering (``walker`` has one stream per walker).

    Members
    -------
    walker : In(stream.Signature(TranslateResponse)).array(walkers)
        The walkers' responses.
    s1 : In(S1AnswerSignature())
        S1's answer; it has no ``ready``: what the port does not take goes
        into the skid register.
    resp : Out(stream.Signature(TranslateResponse))
        The translate port.
    skid_full : Out(1)
        The skid register holds an answer: S1 must not move on.
    done : Out(walkers)
        Bit ``k``: walker ``k``'s response leaves on ``resp`` this cycle.
    walker_sel : Out(range(walkers))
        The walker whose response ``resp`` offers (when it offers one); the
        cache fills follow it.

    Timing
    ------
    No latency: S1's answer and a walker's response reach ``resp`` in the
    cycle they are offered, if nothing of higher priority is offered.  An
    answer S1 resolves while the port is busy or stalled leaves from the
    skid register, at the earliest the next cycle.  An offer not taken is
    offered again, unchanged (the stream contract): the source is held, so a
    walker answering meanwhile, or S1's answer moving into the skid register,
    waits its turn.  Responses leave out of order between the sources.
    """

    def __init__(self, *, walkers):
        self.walkers = walkers
        super().__init__({
            "walker": In(stream.Signature(TranslateResponse)).array(walkers),
            "s1": In(S1AnswerSignature()),
            "resp": Out(stream.Signature(TranslateResponse)),
            "skid_full": Out(1),
            "done": Out(walkers),
            "walker_sel": Out(range(walkers) if walkers > 1 else 1),
        })

    def elaborate(self, platform):
        m = Module()
        n_walk = self.walkers
        walkers = self.walker
        resp = self.resp
        skid = Signal(TranslateResponse)
        skid_full = self.skid_full

        w_resp_any = Signal()
        w_resp_sel = Signal(range(n_walk) if n_walk > 1 else 1)
        for k in reversed(range(n_walk)):
            with m.If(walkers[k].valid):
                m.d.comb += [w_resp_any.eq(1), w_resp_sel.eq(k)]
        held = Signal()                   # last cycle's offer was not taken
        held_skid = Signal()              # ... and came from (or went into) the skid register
        held_walker = Signal.like(w_resp_sel)
        use_skid = Signal()
        use_walker = Signal()
        resp_walker = self.walker_sel     # the walker on the port, with use_walker
        with m.If(held & held_skid):
            m.d.comb += use_skid.eq(1)
        with m.Elif(held):
            m.d.comb += [use_walker.eq(1), resp_walker.eq(held_walker)]
        with m.Elif(skid_full):
            m.d.comb += use_skid.eq(1)
        with m.Elif(w_resp_any):
            m.d.comb += [use_walker.eq(1), resp_walker.eq(w_resp_sel)]
        for k, w in enumerate(walkers):
            m.d.comb += [w.ready.eq(resp.ready & use_walker & (resp_walker == k)),
                         self.done[k].eq(w.valid & w.ready)]
        with m.If(use_skid):
            m.d.comb += [resp.valid.eq(1), resp.payload.eq(skid)]
        with m.Elif(use_walker):
            for k, w in enumerate(walkers):
                with m.If(resp_walker == k):
                    m.d.comb += [resp.valid.eq(1), resp.payload.eq(w.payload)]
        with m.Else():
            # only when S1 moves on, or the same answer would leave twice
            m.d.comb += [resp.valid.eq(self.s1.answer & self.s1.load),
                         resp.payload.eq(self.s1.payload)]
        m.d.sync += [held.eq(resp.valid & ~resp.ready),
                     held_skid.eq(~use_walker),        # S1's answer not taken goes to the skid
                     held_walker.eq(resp_walker)]
        s1_direct = ~use_skid & ~use_walker & resp.ready
        with m.If(use_skid & resp.ready):
            m.d.sync += skid_full.eq(0)
        # the register loads whenever S1 moves on; only its valid bit follows the compare
        with m.If(self.s1.load & ~s1_direct):
            m.d.sync += [skid.eq(self.s1.payload), skid_full.eq(self.s1.answer)]
        return m
