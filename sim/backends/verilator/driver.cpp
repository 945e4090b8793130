// The compiled side of the Verilator backend (sim/backends/verilator/).
//
// It owns the Verilated PageWalkUnit and the DRAM model's *timing* (queue,
// due cycles, open rows, max_outstanding, in-order responses); the memory
// *contents* stay in Python (PhysicalMemory), whose frames it reads directly
// through a table of their storage.  It performs plain reads itself when no
// bus error can be injected; Python performs CASes (they store and feed the
// scoreboard's history), and every access while errors are injected, from a
// callback.  sim_run() clocks the unit without Python for as long as nothing
// needs it: it notes a translate request taken in the shared Status (Python
// does the bookkeeping when it next runs), returns after a translate response
// (the payload in the Status) or a request Python must follow with another,
// and stops at the start of a cycle in which a memory response carrying a bus
// error would be taken.  Python then runs that cycle itself:
// sim_perform_due() when the head access is due, the inputs and the DRAM
// stall written into the shared Status, sim_edge(): the same steps sim_run()
// takes, so both paths give the same cycle for cycle.
//
// One driver for both tops the backend builds, chosen at compile time:
// EPT_NESTED=0, hw.top.PageWalkUnit; EPT_NESTED=1, hw.nested_top.NestedWalkUnit
// (build.py defines it).  The nested top has the native one's ports plus the
// guest side (linear_req/linear_resp, the guest context: cr3, paging, wp,
// nxe, vpid; the invvpid stream; nested_counters) and the same single
// mem_req/mem_resp port, so the memory model is the same; the Status layout
// is the same in both builds (the guest fields stay zero in a native one).
#ifndef EPT_NESTED
#define EPT_NESTED 0
#endif
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <vector>

#include "Vpwu.h"
#include "Vpwu___024root.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_fst_c.h"
#endif

namespace {

// Bit offsets of the port payloads (hw/layouts.py, Struct fields in order).
constexpr int MREQ_OP = 0, MREQ_ADDR = 1, MREQ_COMPARE = 53, MREQ_DATA = 117;
constexpr int MRESP_ERROR = 64;

template <size_t N>
uint64_t get_bits(const VlWide<N>& w, int off, int width) {
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        int b = off + i;
        v |= (uint64_t)((w[b / 32] >> (b % 32)) & 1u) << i;
    }
    return v;
}

struct Req {
    int op;                 // 0 read, 1 CAS
    uint64_t addr, compare, data;
    uint64_t due;
    bool done, error;
    uint64_t result;
};

// Python performs a due DRAM access on the memory contents; returns nonzero
// if it raised (sim_run then stops and Python re-raises).
typedef int (*perform_fn)(int op, uint64_t addr, uint64_t compare, uint64_t data, uint64_t cycle,
                          uint64_t* result_error);


// Python runs the between-cycle hooks due at the start of `cycle` (the first
// step of that cycle's first half) and updates hook_wake; returns 0 when the
// rest of the first half would change nothing Python drives (the loop goes
// on), 1 when Python must run it (a hook queued an INVEPT, say), 2: raised.
typedef int (*hooks_fn)(uint64_t cycle);

// Never: no head access waiting to be performed.
constexpr uint64_t NEVER = ~(uint64_t)0;

// Shared with Python (a ctypes Structure over the same memory), so reading
// the cycle or what was sampled, and setting the inputs, costs no call.
// sim_run's stop codes and the flag indices, mirrored by name in
// sim/backends/verilator/harness.py (Stop, Flag; a test compares them)
enum Stop : int {
    STOP_UNTIL = 0,         // reached `until`
    STOP_PYTHON_CYCLE = 1,  // Python must run this cycle itself
    STOP_CALLBACK_RAISED = 2,
    STOP_HANDSHAKE = 3,     // right after an edge whose handshake Python must look at
    STOP_HOOKS_RAN = 4,     // as STOP_PYTHON_CYCLE, with this cycle's hooks already run
    STOP_ASSERTION = 5,     // an assertion failed at the edge
};
enum Flag : int {
    FLAG_TREQ_READY = 0,
    FLAG_TRESP_VALID = 1,
    FLAG_EPTP_VALID = 2,
    FLAG_EPTP_ERROR = 3,
    FLAG_MRESP_READY = 4,
    FLAG_RESP_TAKEN = 5,
    FLAG_RESP_ERROR_TAKEN = 6,
    FLAG_EPTP_VALID_BEFORE = 7,   // eptp_valid sampled at the edge before
    // the nested top's (0 in a native build)
    FLAG_LREQ_READY = 8,
    FLAG_LRESP_VALID = 9,
    FLAG_CR3_VALID = 10,
    FLAG_CR3_ERROR = 11,
    FLAG_VPID_VALID = 12,
    FLAG_VPID_ERROR = 13,
    FLAG_INVVPID_ERROR = 14,
    FLAG_GUEST_IDLE = 15,
    FLAG_LOST_RACE = 16,
    FLAG_COUNT = 17,
};

// Words of the wide ports (32 bits each)
constexpr int TRESP_WORDS = 3;      // TranslateResponse
constexpr int LRESP_WORDS = 5;      // LinearResponse (137 bits)
constexpr int INVVPID_WORDS = 3;    // InvvpidRequest (82 bits)
constexpr int COUNTER_WORDS = 26;   // PerfCounters (17 x 48 bits)
constexpr int NESTED_COUNTER_WORDS = 23;   // NestedCounters (15 x 48 bits)

struct Status {
    uint64_t cycle;
    uint64_t hook_wake;       // written by Python: the first cycle a hook wants to run
    // sampled at the last edge (values before the edge): treq_ready, tresp_valid,
    // eptp_valid, eptp_error, mresp_ready, resp_taken, resp_error_taken,
    // eptp_valid sampled at the edge before
    uint8_t flags[FLAG_COUNT];
    uint32_t tresp[3];        // the translate response payload
    uint32_t queue_len;       // DRAM requests in flight (pysim draws a stall only with room)
    uint64_t direct_reads;    // reads performed here on the frame table (Python adds them
                              // to its read counters)
    uint64_t head_due;        // the cycle the head access is due if not performed yet, else NEVER
    // Written by Python: the unit's inputs it drives (applied, and in_dirty
    // cleared, when the logic next settles; held until changed) ...
    uint64_t in_treq_payload, in_eptp_value, in_invept_payload;
    uint8_t in_dirty, in_treq_valid, in_tresp_ready, in_eptp_load, in_invept_valid;
    // ... the DRAM stall drawn for this cycle (Dram.drive) ...
    uint8_t stall;
    // ... and a translate request Python has already decided to drive from
    // cycle staged_from on (saves a return to Python just to drive it;
    // writing the inputs clears it)
    uint8_t staged;
    uint64_t staged_from, staged_payload;
    // A translate request taken inside sim_run is not a call into Python:
    // the loop notes it here (the edge's cycle, eptp_valid as Python knew it
    // then) and Python does its bookkeeping when it next runs (a callback or
    // the return), before anything else, so nothing can tell the difference.
    // accept_stop, set by Python: return right after the request is taken
    // (another one waits to be driven).  A response taken always returns,
    // with `responded` set and the payload in tresp.
    uint64_t accept_cycle;
    uint8_t accept_pending, accept_eptp_valid, accept_stop, responded;
    // -- the nested top's (an EPT_NESTED build; unused in a native one) --
    // Written by Python: the guest side's inputs (applied with the others,
    // under in_dirty; cr3_value and vpid_value only while their load is set,
    // the invvpid payload only while valid) ...
    uint64_t in_lreq_payload, in_cr3_value;
    uint32_t in_invvpid_payload[INVVPID_WORDS];
    uint16_t in_vpid_value;
    uint8_t in_lreq_valid, in_lresp_ready, in_cr3_load, in_paging, in_wp, in_nxe, in_vpid_load,
        in_invvpid_valid;
    // ... and a linear request to drive from cycle lstaged_from on (as staged)
    uint8_t lstaged;
    uint64_t lstaged_from, lstaged_payload;
    // sampled at the last edge: the linear response payload
    uint32_t lresp[LRESP_WORDS];
    // A linear request taken inside sim_run, noted as a translate request is:
    // the edge's cycle and the flags as Python knew them during that cycle
    // (sampled at the edge before); laccept_stop, set by Python: return right
    // after it is taken.  A linear response taken returns with lresponded set.
    uint64_t laccept_cycle;
    uint8_t laccept_pending, laccept_stop, lresponded;
    uint8_t laccept_flags[FLAG_COUNT];
};

struct Sim {
    Status st{};
    perform_fn perform = nullptr;
    hooks_fn on_hooks = nullptr;
    VerilatedContext* ctx;
    Vpwu* top;
    // DRAM timing (sim/cosim/dram.py semantics)
    int read_latency, cas_latency, row_miss_penalty, max_outstanding;
    uint64_t row_bytes, banks;
    std::deque<Req> queue;
    std::vector<int64_t> open_rows;     // -1: no open row
    uint64_t row_hits = 0, row_misses = 0, stall_cycles = 0;
    bool ready = true;                  // mem_req.ready this cycle
    // An input of the model changed since its last eval (PUT sets it): a
    // settle with nothing but clk changed can skip its eval (see settle)
    bool dirty = true;
    // The memory contents, shared: frame number -> PhysicalMemory's own
    // uint64[512] storage of that frame (absent: reads as zero), kept up to
    // date by Python (PhysicalMemory.watch_frames).  Used for plain reads
    // only while Python says no bus error can be injected (direct).
    std::unordered_map<uint64_t, const uint64_t*> frames;
    bool direct = false;
    uint64_t limit = 0;                 // 1 << MAXPHYADDR of the memory
#if VM_TRACE
    // The waveform (sim/flows/gtkwave.py timing): a cycle's inputs settle at its
    // start, 10 ns * cycle, and its rising edge is 5 ns later.
    VerilatedFstC* fst = nullptr;
#endif
};

constexpr uint64_t PERIOD_PS = 10000;

// Drive a model input, noting whether it changed.
#define PUT(port, value)              \
    do {                              \
        auto v_ = (value);            \
        if ((port) != v_) {           \
            (port) = v_;              \
            s->dirty = true;          \
        }                             \
    } while (0)

void dump(Sim* s, uint64_t time_ps) {
#if VM_TRACE
    if (s->fst) s->fst->dump(time_ps);
#else
    (void)s;
    (void)time_ps;
#endif
}

// The head access changed (queued, performed or answered).
void update_head(Sim* s) {
    s->st.head_due = s->queue.empty() || s->queue.front().done ? NEVER : s->queue.front().due;
}

// A due plain read, performed here as Python's Dram would (PhysicalMemory.read)
// when that cannot raise or inject an error; false: Python performs it.
bool perform_direct(Sim* s, Req& h) {
    if (h.op != 0 || !s->direct || h.addr >= s->limit || (h.addr & 7)) return false;
    auto it = s->frames.find(h.addr >> 12);
    h.result = it == s->frames.end() ? 0 : it->second[(h.addr & 0xFFF) >> 3];
    h.error = false;
    h.done = true;
    s->st.direct_reads++;
    update_head(s);
    return true;
}

void drive_dram(Sim* s, bool stall) {
    bool room = (int)s->queue.size() < s->max_outstanding;
    s->ready = room && !stall;
    if (!s->ready && room) s->stall_cycles++;
}

// Put the DRAM side of the ports on the unit and settle the logic (clk low).
void settle(Sim* s) {
    Vpwu* t = s->top;
    Status& st = s->st;
    if (st.in_dirty) {
        PUT(t->translate_req___05Fvalid, st.in_treq_valid);
        PUT(t->translate_req___05Fpayload, st.in_treq_payload);
        PUT(t->translate_resp___05Fready, st.in_tresp_ready);
        PUT(t->eptp_load, st.in_eptp_load);
        if (st.in_eptp_load) PUT(t->eptp_value, st.in_eptp_value);
        PUT(t->invept___05Fvalid, st.in_invept_valid);
        if (st.in_invept_valid) PUT(t->invept___05Fpayload, st.in_invept_payload);
#if EPT_NESTED
        PUT(t->linear_req___05Fvalid, st.in_lreq_valid);
        PUT(t->linear_req___05Fpayload, st.in_lreq_payload);
        PUT(t->linear_resp___05Fready, st.in_lresp_ready);
        PUT(t->cr3_load, st.in_cr3_load);
        if (st.in_cr3_load) PUT(t->cr3_value, st.in_cr3_value);
        PUT(t->paging, st.in_paging);
        PUT(t->wp, st.in_wp);
        PUT(t->nxe, st.in_nxe);
        PUT(t->vpid_load, st.in_vpid_load);
        if (st.in_vpid_load) PUT(t->vpid_value, st.in_vpid_value);
        PUT(t->invvpid___05Fvalid, st.in_invvpid_valid);
        if (st.in_invvpid_valid)
            for (int i = 0; i < INVVPID_WORDS; i++) PUT(t->invvpid___05Fpayload[i], st.in_invvpid_payload[i]);
#endif
        st.in_dirty = 0;
    }
    if (st.staged && st.cycle >= st.staged_from) {
        PUT(t->translate_req___05Fvalid, 1);
        PUT(t->translate_req___05Fpayload, st.staged_payload);
        st.staged = 0;
    }
#if EPT_NESTED
    if (st.lstaged && st.cycle >= st.lstaged_from) {
        PUT(t->linear_req___05Fvalid, 1);
        PUT(t->linear_req___05Fpayload, st.lstaged_payload);
        st.lstaged = 0;
    }
#endif
    PUT(t->mem_req___05Fready, s->ready);
    const Req* head = (!s->queue.empty() && s->st.cycle >= s->queue.front().due) ? &s->queue.front() : nullptr;
    PUT(t->mem_resp___05Fvalid, head != nullptr);
    if (head) {
        PUT(t->mem_resp___05Fpayload[0], (uint32_t)head->result);
        PUT(t->mem_resp___05Fpayload[1], (uint32_t)(head->result >> 32));
        PUT(t->mem_resp___05Fpayload[2], head->error ? 1u : 0u);
    }
    t->clk = 0;
#if VM_TRACE
    s->dirty = true;        // the waveform dumps every settle: evaluate each
#endif
    if (s->dirty) {
        t->eval();
        s->dirty = false;
    } else {
        // Nothing but clk changed since the edge's eval, whose outputs hold for
        // these inputs (no logic reads clk as data; Amaranth's sync logic is
        // posedge only): skip the eval, a third of a cycle's cost, but record
        // clk low as it would have, so that the next edge is seen as one.
        t->rootp->__Vtrigprevexpr___TOP__clk__0 = 0;
    }
    dump(s, s->st.cycle * PERIOD_PS);
}

// The edge ending this cycle, then the DRAM model's clock.
void edge(Sim* s) {
    Vpwu* t = s->top;
    bool head_valid = t->mem_resp___05Fvalid;
    uint8_t* f = s->st.flags;
    f[FLAG_EPTP_VALID_BEFORE] = f[FLAG_EPTP_VALID];   // as Python knew it during this cycle
    f[FLAG_TREQ_READY] = t->translate_req___05Fready;
    f[FLAG_TRESP_VALID] = t->translate_resp___05Fvalid;
    f[FLAG_EPTP_VALID] = t->eptp_valid;
    f[FLAG_EPTP_ERROR] = t->eptp_error;
    f[FLAG_MRESP_READY] = t->mem_resp___05Fready;
    for (int i = 0; i < TRESP_WORDS; i++) s->st.tresp[i] = t->translate_resp___05Fpayload[i];
#if EPT_NESTED
    f[FLAG_LREQ_READY] = t->linear_req___05Fready;
    f[FLAG_LRESP_VALID] = t->linear_resp___05Fvalid;
    f[FLAG_CR3_VALID] = t->cr3_valid;
    f[FLAG_CR3_ERROR] = t->cr3_error;
    f[FLAG_VPID_VALID] = t->vpid_valid;
    f[FLAG_VPID_ERROR] = t->vpid_error;
    f[FLAG_INVVPID_ERROR] = t->invvpid_error;
    f[FLAG_GUEST_IDLE] = t->guest_idle;
    f[FLAG_LOST_RACE] = t->lost_race;
    for (int i = 0; i < LRESP_WORDS; i++) s->st.lresp[i] = t->linear_resp___05Fpayload[i];
#endif
    bool offered = t->mem_req___05Fvalid;
    Req req{};
    if (offered) {
        const auto& p = t->mem_req___05Fpayload;
        req.op = (int)get_bits(p, MREQ_OP, 1);
        req.addr = get_bits(p, MREQ_ADDR, 52);
        req.compare = get_bits(p, MREQ_COMPARE, 64);
        req.data = get_bits(p, MREQ_DATA, 64);
    }
    t->clk = 1;
    t->eval();
    dump(s, s->st.cycle * PERIOD_PS + PERIOD_PS / 2);
    // sim/cosim/dram.py Dram.clock
    bool taken = head_valid && f[FLAG_MRESP_READY];
    f[FLAG_RESP_TAKEN] = taken;
    f[FLAG_RESP_ERROR_TAKEN] = taken && s->queue.front().error;
    if (taken) {
        s->queue.pop_front();
        update_head(s);
    }
    if (offered && s->ready) {
        uint64_t row = req.addr / s->row_bytes;
        uint64_t bank = row % s->banks;
        int lat = req.op == 0 ? s->read_latency : s->cas_latency;
        if (s->open_rows[bank] == (int64_t)row) {
            s->row_hits++;
        } else {
            s->row_misses++;
            s->open_rows[bank] = (int64_t)row;
            lat += s->row_miss_penalty;
        }
        req.due = s->st.cycle + lat;
        if (!s->queue.empty() && req.due < s->queue.back().due + 1) req.due = s->queue.back().due + 1;
        s->queue.push_back(req);
        if (s->queue.size() == 1) update_head(s);
    }
    s->st.queue_len = s->queue.size();
    s->st.cycle++;
}

}  // namespace

// The library is built with hidden visibility; only this API is exported.
#pragma GCC visibility push(default)
extern "C" {

void* sim_new(int read_latency, int cas_latency, int row_miss_penalty, uint64_t row_bytes,
              uint64_t banks, int max_outstanding) {
    Sim* s = new Sim;
    s->ctx = new VerilatedContext;
#if VM_TRACE
    s->ctx->traceEverOn(true);
#endif
    // a failed Assert (hw/checks.py) must reach Python as an error, not abort it
    s->ctx->fatalOnError(false);
    s->top = new Vpwu(s->ctx);
    s->read_latency = read_latency;
    s->cas_latency = cas_latency;
    s->row_miss_penalty = row_miss_penalty;
    s->row_bytes = row_bytes;
    s->banks = banks;
    s->max_outstanding = max_outstanding;
    s->open_rows.assign(banks, -1);
    s->st.head_due = NEVER;
    s->st.in_tresp_ready = 1;
    s->st.in_lresp_ready = 1;
    Vpwu* t = s->top;
    t->rst = 0;
    t->clk = 0;
    t->translate_resp___05Fready = 1;
#if EPT_NESTED
    t->linear_resp___05Fready = 1;
#endif
    t->eval();
    return s;
}

// Start the FST waveform (a build with VM_TRACE only); 0 on success.
int sim_trace_open(void* p, const char* path) {
#if VM_TRACE
    Sim* s = (Sim*)p;
    s->fst = new VerilatedFstC;
    s->top->trace(s->fst, 99);
    s->fst->open(path);
    if (!s->fst->isOpen()) {
        delete s->fst;
        s->fst = nullptr;
        return 1;
    }
    return 0;
#else
    (void)p;
    (void)path;
    return 2;
#endif
}

void sim_trace_close(void* p) {
#if VM_TRACE
    Sim* s = (Sim*)p;
    if (s->fst) {
        s->fst->close();
        delete s->fst;
        s->fst = nullptr;
    }
#else
    (void)p;
#endif
}

void sim_free(void* p) {
    Sim* s = (Sim*)p;
    sim_trace_close(p);
    s->top->final();
    delete s->top;
    delete s->ctx;
    delete s;
}

void sim_set_callbacks(void* p, perform_fn perform, hooks_fn on_hooks) {
    Sim* s = (Sim*)p;
    s->perform = perform;
    s->on_hooks = on_hooks;
}
Status* sim_status(void* p) { return &((Sim*)p)->st; }

// The frame table: `data` is the frame's storage, 0 when the frame is dropped.
void sim_map_frame(void* p, uint64_t frame, const uint64_t* data) {
    Sim* s = (Sim*)p;
    if (data) s->frames[frame] = data;
    else s->frames.erase(frame);
}

// Whether plain reads may be performed here (no bus-error injection configured).
void sim_set_direct(void* p, int direct, uint64_t limit) {
    Sim* s = (Sim*)p;
    s->direct = direct;
    s->limit = limit;
}

// The head access is due (head_due <= cycle): perform it here if it is a
// plain read that can be; else return 1 and Python reads it with sim_head()
// and answers sim_perform().
int sim_perform_due(void* p) {
    Sim* s = (Sim*)p;
    return !perform_direct(s, s->queue.front());
}

void sim_head(void* p, uint64_t* out) {
    const Req& h = ((Sim*)p)->queue.front();
    out[0] = h.op;
    out[1] = h.addr;
    out[2] = h.compare;
    out[3] = h.data;
}

void sim_perform(void* p, uint64_t result, int error) {
    Req& h = ((Sim*)p)->queue.front();
    h.done = true;
    h.result = result;
    h.error = error;
    update_head((Sim*)p);
}

// One edge with the inputs as set and the stall drawn (Dram.drive's ready);
// afterwards read what was sampled.
void sim_edge(void* p) {
    Sim* s = (Sim*)p;
    drive_dram(s, s->st.stall);
    settle(s);
    edge(s);
}

// Did an assertion fail (the message went to stdout)?
int sim_got_error(void* p) { return ((Sim*)p)->ctx->gotError(); }

void sim_counters(void* p, uint32_t* out) {
    Vpwu* t = ((Sim*)p)->top;
    for (int i = 0; i < COUNTER_WORDS; i++) out[i] = t->counters[i];
}

// The shared Status's size and the offsets of its first nested field and of
// its last, for Python to check its ctypes mirror against (harness.py).
void sim_status_layout(uint64_t* out) {
    out[0] = sizeof(Status);
    out[1] = offsetof(Status, in_lreq_payload);
    out[2] = offsetof(Status, lresp);
    out[3] = offsetof(Status, laccept_flags);
}

// Which top the library was built for: 0 PageWalkUnit, 1 NestedWalkUnit.
int sim_top() { return EPT_NESTED; }

// The nested top's NestedCounters (zeros in a native build).
void sim_nested_counters(void* p, uint32_t* out) {
#if EPT_NESTED
    Vpwu* t = ((Sim*)p)->top;
    for (int i = 0; i < NESTED_COUNTER_WORDS; i++) out[i] = t->nested_counters[i];
#else
    (void)p;
    for (int i = 0; i < NESTED_COUNTER_WORDS; i++) out[i] = 0;
#endif
}

void sim_dram_stats(void* p, uint64_t* out) {
    Sim* s = (Sim*)p;
    out[0] = s->row_hits;
    out[1] = s->row_misses;
    out[2] = s->stall_cycles;
    out[3] = s->queue.size();
}

// Clock quiet cycles until `until`.  Stops at the start of a cycle that needs
// Python and returns 1 (Python then runs that cycle), or 4 (the same, its
// hooks already run), or returns 0 at `until`, or 3 right after an edge whose
// handshake Python must look at (2: a callback raised; 5: an assertion
// failed at the edge).  Due hooks run from a
// callbacks, which cost far less than leaving the loop.
// A plain read is performed here when it can (perform_direct), else by the
// perform callback.
// The caller guarantees that Python's own inputs would not change (but for an
// INVEPT strobe, dropped after the first edge) and that no per-cycle random
// draw is needed (no stalls).
// `first_half_done`: the cycle whose first half (hooks, DRAM drive, inputs)
// Python has just run; the loop runs its edge without calling hooks again.
int sim_run(void* p, uint64_t until, uint64_t first_half_done) {
    Sim* s = (Sim*)p;
    Vpwu* t = s->top;
    while (s->st.cycle < until) {
        if (s->st.cycle >= s->st.hook_wake && s->st.cycle != first_half_done) {
            if (!s->on_hooks) return STOP_PYTHON_CYCLE;
            int r = s->on_hooks(s->st.cycle);
            if (r == 2) return STOP_CALLBACK_RAISED;
            if (r == 1) return STOP_HOOKS_RAN;   // Python runs the rest of this first half
        }
        if (!s->queue.empty()) {
            Req& h = s->queue.front();
            if (s->st.cycle >= h.due && !h.done && !perform_direct(s, h)) {
                // a call into Python costs far less than leaving the loop
                if (!s->perform) return STOP_PYTHON_CYCLE;
                uint64_t re[2];
                if (s->perform(h.op, h.addr, h.compare, h.data, s->st.cycle, re)) return STOP_CALLBACK_RAISED;
                h.done = true;
                h.result = re[0];
                h.error = re[1];
                update_head(s);
            }
        }
        drive_dram(s, false);
        settle(s);
        bool accept = t->translate_req___05Fvalid && t->translate_req___05Fready;
        bool respond = t->translate_resp___05Fvalid && t->translate_resp___05Fready;
        bool error = t->mem_resp___05Fvalid && t->mem_resp___05Fready && s->queue.front().error;
        if (error) return STOP_PYTHON_CYCLE;
#if EPT_NESTED
        bool was_idle = s->st.flags[FLAG_GUEST_IDLE];
        bool laccept = t->linear_req___05Fvalid && t->linear_req___05Fready;
        bool lrespond = t->linear_resp___05Fvalid && t->linear_resp___05Fready;
        if (laccept) std::memcpy(s->st.laccept_flags, s->st.flags, FLAG_COUNT);   // as Python knew them
#endif
        edge(s);
        if (s->ctx->gotError()) return STOP_ASSERTION;
        PUT(t->invept___05Fvalid, 0);   // an INVEPT Python drove is a one-cycle strobe
        bool stop = false;
        if (accept) {           // Python's bookkeeping follows when it next runs
            s->st.accept_pending = 1;
            s->st.accept_cycle = s->st.cycle - 1;
            s->st.accept_eptp_valid = s->st.flags[FLAG_EPTP_VALID_BEFORE];
            PUT(t->translate_req___05Fvalid, 0);
            stop = s->st.accept_stop;
        }
        if (respond) {          // Python takes it from tresp; its predicates wait for responses
            s->st.responded = 1;
            stop = true;
        }
#if EPT_NESTED
        PUT(t->invvpid___05Fvalid, 0);  // an INVVPID is a one-cycle strobe too
        if (laccept) {          // as a translate request
            s->st.laccept_pending = 1;
            s->st.laccept_cycle = s->st.cycle - 1;
            PUT(t->linear_req___05Fvalid, 0);
            stop = stop || s->st.laccept_stop;
        }
        if (lrespond) {
            s->st.lresponded = 1;
            stop = true;
        }
        // guest_idle rose: what a wait for the linear port to drain looks at
        if (!was_idle && s->st.flags[FLAG_GUEST_IDLE]) stop = true;
#endif
        if (stop) return STOP_HANDSHAKE;
    }
    return STOP_UNTIL;
}

// The bare model (make bench's yardstick): the same unit and DRAM timing with
// no Python at all.  Translates `n` request payloads (tag 0) one at a time,
// each driven from the cycle after the previous response, with a one-cycle
// INVEPT strobe (`invept_payload`) before every `invept_every`-th request (0:
// none); reads come from the frame table, CASes act on it directly.  Returns
// the cycles run; `done` gets the translations answered (fewer if `limit`
// cycles ran out).
uint64_t sim_bare(void* p, const uint64_t* reqs, uint64_t n, uint64_t invept_payload,
                  uint64_t invept_every, uint64_t limit, uint64_t* done) {
    Sim* s = (Sim*)p;
    Vpwu* t = s->top;
    Status& st = s->st;
    const uint64_t start = st.cycle;
    uint64_t i = 0, answered = 0;
    enum { INVEPT, REQUEST, WAIT } phase = invept_every ? INVEPT : REQUEST;
    st.in_dirty = 0;
    st.staged = 0;
    PUT(t->translate_resp___05Fready, 1);
    PUT(t->eptp_load, 0);
    PUT(t->invept___05Fvalid, 0);
    PUT(t->translate_req___05Fvalid, 0);
    while (answered < n && st.cycle - start < limit) {
        if (!s->queue.empty()) {
            Req& h = s->queue.front();
            if (st.cycle >= h.due && !h.done && !perform_direct(s, h)) {
                auto it = s->frames.find(h.addr >> 12);
                h.done = true;
                h.error = h.op == 0 || h.addr >= s->limit || (h.addr & 7);
                h.result = 0;
                if (!h.error && it != s->frames.end()) {
                    uint64_t* w = const_cast<uint64_t*>(it->second) + ((h.addr & 0xFFF) >> 3);
                    h.result = *w;
                    if (*w == h.compare) *w = h.data;
                }
                update_head(s);
            }
        }
        drive_dram(s, false);
        if (phase == INVEPT) {
            PUT(t->invept___05Fvalid, 1);
            PUT(t->invept___05Fpayload, invept_payload);
        } else if (phase == REQUEST) {
            PUT(t->translate_req___05Fvalid, 1);
            PUT(t->translate_req___05Fpayload, reqs[i]);
        }
        settle(s);
        bool accept = t->translate_req___05Fvalid && t->translate_req___05Fready;
        bool respond = t->translate_resp___05Fvalid && t->translate_resp___05Fready;
        edge(s);
        if (s->ctx->gotError()) break;
        if (phase == INVEPT) {
            PUT(t->invept___05Fvalid, 0);
            phase = REQUEST;
        } else if (accept) {
            PUT(t->translate_req___05Fvalid, 0);
            phase = WAIT;
            i++;
        }
        if (respond) {
            answered++;
            phase = invept_every && i % invept_every == 0 ? INVEPT : REQUEST;
        }
    }
    *done = answered;
    return st.cycle - start;
}

}  // extern "C"
#pragma GCC visibility pop
