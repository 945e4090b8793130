"""Waveforms for GTKWave: one naming for pysim's VCD and Verilator's FST.

Both backends write the unit under the scope ``TOP.pwu`` with the names the
generated Verilog has (Verilator's own), so one GTKWave save file works on
either dump:

- pysim: Amaranth writes its VCD under ``bench.top`` with enum-valued signals
  as strings; :func:`normalize_vcd` renames the scopes, turns those strings
  back into the enum's bits (so the translate filters apply, as on the FST)
  and writes time in picoseconds, Verilator's unit.
- Verilator: the driver dumps FST after every eval (``--trace-fst`` build).

Time: cycle ``n`` ends at the rising edge at ``(10 n + 5)`` ns (the harness's
100 MHz clock); markers for mismatches sit on the edge of the response's
cycle.  :func:`write_filters` writes one GTKWave translate filter per enum of
the design (``value NAME`` lines, in the hex the save file displays).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from amaranth.hdl import Format, Fragment, Value
from amaranth.hdl._ir import PortDirection
from amaranth.lib import wiring

from sim.files import atomic_open, write_atomic

__all__ = ["PERIOD_PS", "edge_ps", "WaveNames", "trace_groups", "write_filters", "normalize_vcd",
           "write_save_file", "dump_names", "check_wave_path", "write_txn_log", "marker_note", "finish_waveform"]

PERIOD_PS = 10_000                 # the harness's clock: 100 MHz
TOP = ("TOP", "pwu")               # the unit's scope in every dump (Verilator's naming)


def edge_ps(cycle: int) -> int:
    """Time of the rising edge that ends ``cycle``, in picoseconds."""
    return cycle * PERIOD_PS + PERIOD_PS // 2


WAVE_SUFFIXES = (".vcd", ".fst")


def wave_outputs(path) -> list[Path]:
    """Every file a waveform run writes beside its dump ``X.vcd``/``X.fst``, the dump
    of either format included: ``X.gtkw``, ``X.txn.log``, pysim's raw ``X.vcd.amaranth.tmp``."""
    path = Path(path)
    return ([path.with_suffix(s) for s in WAVE_SUFFIXES]
            + [path.with_suffix(".gtkw"), path.with_suffix(".txn.log"),
               path.with_name(path.with_suffix(".vcd").name + ".amaranth.tmp")])


def check_wave_path(path, suffix: str) -> Path:
    """The dump's path, its folder created; a backend writes one format only.

    What an earlier run left under the same name (a dump of the other format,
    a save file, a transaction log) is removed first, so nothing beside the
    new save file belongs to another run."""
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"waveform {path}: this backend writes {suffix} (pysim: .vcd, verilator: .fst)")
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in wave_outputs(path):
        old.unlink(missing_ok=True)
    return path


def marker_note(gtkw: Path | str, cycle: int) -> str:
    """The words a mismatch report adds: where to look in the waveform."""
    return f"see {gtkw} at {edge_ps(cycle) // 1000} ns (cycle {cycle}, marker on the edge)"


# -- names --------------------------------------------------------------------------

@dataclass(frozen=True)
class EnumInfo:
    name: str                      # the enum's qualified name, e.g. "WalkerState"
    width: int
    variants: dict                 # value -> member name


def _leaves(fmt, path=()):
    """(path, Format.Enum or None, width) for a signal's format, as pysim
    names its VCD vars: a struct gives the whole vector, then each field."""
    if isinstance(fmt, Format.Struct):
        yield path, None, len(fmt._value)
        for name, sub in fmt._fields.items():
            yield from _leaves(sub, path + (name,))
    elif isinstance(fmt, Format.Array):
        yield path, None, len(fmt._value)
        for i, sub in enumerate(fmt._fields):
            yield from _leaves(sub, path + (i,))
    elif isinstance(fmt, Format.Enum):
        yield path, EnumInfo(fmt._name or "enum", len(fmt._value), dict(fmt._variants)), len(fmt._value)
    elif isinstance(fmt, Format) and len(fmt._chunks) == 1 and isinstance(fmt._chunks[0], tuple):
        yield path, None, len(fmt._chunks[0][0])


def _signal_leaves(sig):
    """:func:`_leaves` of a signal.  A signal with a decoder function (an FSM's
    state: pysim writes its state names) counts as an enum of its values."""
    dec = sig._decoder
    if dec is not None and not isinstance(dec, type) and len(sig) <= 8:
        variants = {}
        for v in range(1 << len(sig)):
            try:
                name = dec(v)           # Amaranth's FSM decoder: "STATE/3"; unused codes raise
            except (KeyError, IndexError, ValueError):
                continue
            if name and name != str(v):
                variants[v] = name
        if variants:
            # one FSM may be elaborated in several blocks: name the filter by content
            tag = hashlib.sha1(repr(sorted(variants.items())).encode()).hexdigest()[:6]
            yield (), EnumInfo(f"fsm_{sig.name}_{tag}", len(sig), variants), len(sig)
            return
    yield from _leaves(sig._format)


def _field_name(name: str, path: tuple) -> str:
    for item in path:
        name += f"[{item}]" if isinstance(item, int) else f".{item}"
    return name


def _prepare(dut, with_ports: bool):
    """The design as pysim names it (no ports) or as the Verilog does (the
    signature's members as ports, named ``translate_req__valid`` ...)."""
    ports = ()
    if with_ports:
        ports = {}
        for path, member, value in dut.signature.flatten(dut):
            direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
            ports["__".join(map(str, path))] = (Value.cast(value), direction)
    return Fragment.get(dut, None).prepare(ports)


def _naming(design) -> dict[int, tuple]:
    """id(signal) -> (signal, {scope: name}) for the unit's scopes, the scope
    as ``TOP.pwu...`` (Signals compare structurally: they cannot key a dict)."""
    out: dict[int, tuple] = {}
    for info in design.fragments.values():
        if not info.name or info.name[0] != "top":
            continue
        scope = TOP + info.name[1:]
        for sig, name in info.signal_names.items():
            out.setdefault(id(sig), (sig, {}))[1][scope] = name
    return out


class WaveNames:
    """Names of a unit's signals in the dumps, and which of them are enums.

    The dumps use the generated Verilog's names (Verilator keeps them).
    pysim's own names differ where Amaranth numbers a clash (``name$12``),
    which depends on the ports; :meth:`pysim_renames` maps them for
    :func:`normalize_vcd`.  Component ports and attributes are the same
    Signal objects in every elaboration, so they can be matched; signals a
    block creates in ``elaborate`` cannot, and keep pysim's name.
    """

    def __init__(self, dut):
        self._verilog = _naming(_prepare(dut, True))
        self._pysim = _naming(_prepare(dut, False))

    def _where(self, sig):
        """(scope, name) to trace a signal under: the deepest scope naming it
        without a "$n" suffix (the block's own name for its port)."""
        entry = self._verilog.get(id(sig))
        if entry is None:
            return None
        return max(entry[1].items(), key=lambda sn: ("$" not in sn[1], len(sn[0])))

    def vars_of(self, value) -> list[tuple[str, int, EnumInfo | None]]:
        """(full GTKWave name, width, enum) for each var of a traced value:
        the vector, then each field of a struct."""
        sig = Value.cast(value)
        where = self._where(sig)
        if where is None:
            return []
        scope, name = where
        out = []
        for path, enum_info, width in _signal_leaves(sig):
            full = ".".join(scope + (_field_name(name, path),))
            out.append((full + (f"[{width - 1}:0]" if width > 1 else ""), width, enum_info))
        return out

    def enums(self) -> dict[str, EnumInfo]:
        """Every enum any signal of the design carries, by name."""
        found = {}
        for sig, _ in self._verilog.values():
            for _, info, _ in _signal_leaves(sig):
                if info is not None:
                    found[info.name] = info
        return found

    def pysim_renames(self) -> dict[tuple, dict[str, str]]:
        """scope -> {pysim var name: Verilog var name} for the signals both
        name in that scope differently (struct fields follow their vector)."""
        out: dict[tuple, dict[str, str]] = defaultdict(dict)
        for key, (sig, scopes) in self._pysim.items():
            vnames = self._verilog.get(key, (None, {}))[1]
            for scope, pname in scopes.items():
                vname = vnames.get(scope)
                if vname is None or vname == pname:
                    continue
                for path, _, _ in _signal_leaves(sig):
                    out[scope][_vcd_name(pname, path)] = _field_name(vname, path)
        return out

    def pysim_enum_vars(self) -> dict[tuple, EnumInfo]:
        """(scope, var name as pysim writes it) -> enum, for normalize_vcd."""
        out = {}
        for sig, scopes in self._pysim.values():
            for path, enum_info, _ in _signal_leaves(sig):
                if enum_info is not None:
                    for scope, name in scopes.items():
                        out[(scope, _vcd_name(name, path))] = enum_info
        return out


def _vcd_name(name: str, path: tuple) -> str:
    """A var's name in Amaranth's VCD: fields are escaped (``\\a.b``)."""
    return "\\" + _field_name(name, path) if path else name


def trace_groups(dut) -> dict[str, list]:
    """The save file's groups: one per block, in the order of a transaction."""
    groups = {
        # the clock and the cycle number (cycle n ends at the n-th edge): what a reader needs first
        "clock": ["clk", "cycle"],
        "translate port": [dut.translate_req.valid, dut.translate_req.ready, dut.translate_req.payload,
                           dut.translate_resp.valid, dut.translate_resp.ready,
                           dut.translate_resp.payload],
        "EPTP and contexts": [dut.eptp_load, dut.eptp_value, dut.eptp_valid, dut.eptp_error,
                              dut.context_table.ready, dut.context_table.cur_id],
        "INVEPT": [dut.invept.valid, dut.invept.ready, dut.invept.payload, dut.invept_count,
                   dut.context_table.flush],
    }
    if dut.tlb is not None:
        t = dut.tlb
        groups["TLB"] = [t.lookup.en, t.lookup.key, t.lookup.hit, t.lookup.ok, t.lookup.data, t.drop,
                         t.fill.valid, t.fill.key, t.fill.data]
    if dut.pscs:
        groups["paging-structure caches"] = [s for psc in dut.pscs.values()
                                             for s in (psc.lookup.hit, psc.fill.valid, psc.drop)]
    for k, w in enumerate(dut.walker_units):
        groups[f"walker {k}"] = [w.debug.state, w.debug.level, w.page, w.access, w.walked]
        ad = w.ad_updater
        groups[f"A/D updater {k}"] = [ad.debug.state, ad.start, ad.pending, ad.done, ad.status]
    groups["memory port"] = [dut.mem_req.valid, dut.mem_req.ready, dut.mem_req.payload,
                             dut.mem_resp.valid, dut.mem_resp.ready, dut.mem_resp.payload]
    groups["counters"] = [dut.counters_clear, dut.counters]
    return groups


# -- filters ------------------------------------------------------------------------

def write_filters(directory: Path, enums: dict[str, EnumInfo]) -> dict[str, Path]:
    """One translate filter file per enum: ``<hex value> <NAME>`` per member,
    the value as GTKWave prints it in hex (zero-padded to the width's digits,
    and once more unpadded in case a version trims)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, info in sorted(enums.items()):
        digits = max(1, (info.width + 3) // 4)
        lines = []
        for value, member in sorted(info.variants.items()):
            padded = f"{value:0{digits}X}"
            lines.append(f"{padded} {member}")
            if padded.lstrip("0") and padded.lstrip("0") != padded:
                lines.append(f"{padded.lstrip('0')} {member}")
        path = directory / f"{name}.txt"
        write_atomic(path, "\n".join(lines) + "\n")
        paths[name] = path.resolve()
    return paths


def parse_filter(path: Path) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            key, text = line.split(None, 1)
            out[key] = text
    return out


# -- the pysim VCD --------------------------------------------------------------------



def normalize_vcd(src: Path, dst: Path, names: WaveNames) -> None:
    """Rewrite Amaranth's VCD ``src`` into ``dst`` with the Verilog's naming:
    scopes ``bench.top`` -> ``TOP.pwu``, var names as the Verilog has them
    (no ``\\`` escapes, clash numbers as in the Verilog), enum strings back
    to bits, times in ps."""
    enum_vars = names.pysim_enum_vars()
    renames = names.pysim_renames()
    with open(src) as fin:
        header = []
        for line in fin:
            header.append(line)
            if line.startswith("$enddefinitions"):
                break
        ids: dict[str, dict] = {}          # enum var id -> {member name: value}
        out_header = _rename_header(header, renames, enum_vars, ids)
        with atomic_open(dst) as out:
            out.writelines(out_header)
            for line in fin:
                c = line[:1]
                if c == "#":
                    out.write(f"#{int(line[1:]) // 1000}\n")       # fs -> ps
                elif c == "s" and ids:
                    text, vid = line[1:].rstrip("\n").rsplit(" ", 1)
                    values = ids.get(vid)
                    if values is None:
                        out.write(line)
                    else:
                        value = values.get(text)
                        out.write(f"b{value:b} {vid}\n" if value is not None else f"bx {vid}\n")
                else:
                    out.write(line)


_CLASH = re.compile(r"\$\d+(?=$|[.[])")


def _rename_header(header: list[str], renames: dict, enum_vars: dict, ids: dict) -> list[str]:
    # pass 1: every var's new name, per scope, so clashes can be seen
    decls = [(i, _unit_scope(list(scope)), f[0], f[1], f[2], f[3]) for i, scope, f in vcd_vars(header)]
    by_scope: dict[tuple, list] = defaultdict(list)
    for d in decls:
        by_scope[d[1]].append(d)
    out = list(header)
    for sc, ds in by_scope.items():
        rn = renames.get(sc, {})
        new = {d[0]: rn.get(d[5], d[5].lstrip("\\")) for d in ds}
        taken = {new[d[0]] for d in ds if d[5] in rn}
        for d in ds:
            if d[5] not in rn and new[d[0]] in taken:
                new[d[0]] += "$sim"        # a name the Verilog gives another signal
        for i, _, vtype, size, vid, vname in ds:
            info = enum_vars.get((sc, vname)) if vtype == "string" else None
            if info is not None:
                ids[vid] = {n: v for v, n in info.variants.items()}
                vtype, size = "wire", str(info.width)
            out[i] = (vtype, size, vid, new[i])
    # an Amaranth clash name (``lookup__key$12``: a parent's copy of a child's port)
    # that shares its value with another var is an alias: left out, the child has it
    users: dict[str, int] = defaultdict(int)
    for line in out:
        if isinstance(line, tuple):
            users[line[2]] += 1
    out = [line for line in out if not (isinstance(line, tuple) and users[line[2]] > 1
                                        and _CLASH.search(line[3]))]
    # a clash name of a signal of its own (two locals of one name in a block): numbered
    # the plain way, as a VCD reader expects a name and not a ``$`` keyword
    out = [(line[0], line[1], line[2], _CLASH.sub(lambda m: "_" + m.group(0)[1:], line[3]))
           if isinstance(line, tuple) else line for line in out]
    # pass 2: scopes renamed; a field var ``vec.field`` goes into a scope
    # ``vec`` (GTKWave then names it ``...vec.field``, as it does on the FST)
    result, scope, deferred = [], [], [[]]
    for line in out:
        if isinstance(line, tuple):
            vtype, size, vid, name = line
            parts = name.split(".")
            if len(parts) > 1:
                deferred[-1].append((parts, vtype, size, vid))
            else:
                result.append(f"$var {vtype} {size} {vid} {name} $end\n")
            continue
        s = line.strip()
        if s.startswith("$timescale"):
            line = "$timescale 1 ps $end\n"
        elif s.startswith("$scope"):
            kind, name = s.split()[1:3]
            scope.append(name)
            deferred.append([])
            if scope == ["bench"]:
                name = TOP[0]
            elif scope == ["bench", "top"]:
                name = TOP[1]
            line = f"$scope {kind} {name} $end\n"
        elif s.startswith("$upscope"):
            scope.pop()
            result.extend(_field_scopes(deferred.pop()))
        result.append(line)
    return result


def _field_scopes(fields: list) -> list[str]:
    """Scopes holding dotted field vars: [(["vec", "f"], type, size, id)]."""
    lines, groups = [], defaultdict(list)
    for parts, vtype, size, vid in fields:
        groups[parts[0]].append((parts[1:], vtype, size, vid))
    for head, members in groups.items():
        lines.append(f"$scope module {head} $end\n")
        nested = [m for m in members if len(m[0]) > 1]
        for parts, vtype, size, vid in members:
            if len(parts) == 1:
                lines.append(f"$var {vtype} {size} {vid} {parts[0]} $end\n")
        lines.extend(_field_scopes(nested))
        lines.append("$upscope $end\n")
    return lines


def _unit_scope(scope: list[str]) -> tuple:
    """A pysim VCD scope (``bench.top...``) as the unit's (``TOP.pwu...``)."""
    if scope[:2] == ["bench", "top"]:
        return TOP + tuple(scope[2:])
    return tuple(scope)


def vcd_vars(lines):
    """Walk a VCD header: (line index, scope path, [type, size, id, name,
    range or None]) for each ``$var``, stopping at ``$enddefinitions``."""
    scope: list[str] = []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("$scope"):
            scope.append(s.split()[2])
        elif s.startswith("$upscope"):
            scope.pop()
        elif s.startswith("$var"):
            p = s.split()
            yield i, tuple(scope), [p[1], p[2], p[3], p[4],
                                    p[5] if len(p) > 6 and p[5].startswith("[") else None]
        elif s.startswith("$enddefinitions"):
            return


def var_name(scope: tuple, fields: list) -> str:
    """The name GTKWave shows for a var: ``a.b.c[3:0]`` (the range from the
    width when the declaration gives none)."""
    rng = fields[4] if fields[4] is not None else (f"[{int(fields[1]) - 1}:0]" if int(fields[1]) > 1 else "")
    return ".".join(scope + (fields[3],)) + rng


def dump_names(path: Path) -> set[str]:
    """Every signal name GTKWave shows for a VCD or FST dump (``a.b.c[3:0]``)."""
    path = Path(path)
    if path.suffix == ".fst":
        fst2vcd = shutil.which("fst2vcd")
        if fst2vcd is None:
            raise FileNotFoundError("reading an FST needs fst2vcd (it comes with GTKWave)")
        text = subprocess.run([fst2vcd, "-f", str(path)], capture_output=True, text=True, check=True).stdout
        lines = text.splitlines()
    else:
        lines = _header_lines(path)
    return {var_name(scope, fields) for _, scope, fields in vcd_vars(lines)}


def _header_lines(path: Path) -> list[str]:
    lines = []
    with open(path) as f:
        for line in f:
            lines.append(line)
            if line.startswith("$enddefinitions"):
                break
    return lines


# -- the save file ------------------------------------------------------------------------

# the default view: about this many cycles across the window, from just before the first walk
VIEW_CYCLES = 120
WINDOW_PIXELS = 1600 - 340          # [size] less [signals_width]


def view_zoom(cycles: int = VIEW_CYCLES) -> float:
    """GTKWave's zoom for ``cycles`` across the window.  GTKWave 3.3 draws 2**(-z - 8)
    time units (ps here) per pixel at zoom z (measured: -20 gives about 4 ns a pixel)."""
    return -(math.log2(cycles * PERIOD_PS / WINDOW_PIXELS) + 8)


def _is_stream_member(value, role: str) -> bool:
    name = Value.cast(value).name if not isinstance(value, str) else value
    return name.endswith(f"__{role}") or name == role


def write_save_file(path: Path, dump: Path, names: WaveNames, groups: dict[str, list],
                    filters: dict[str, Path], markers: Iterable[int] = (), start: int | None = None) -> list[str]:
    """The GTKWave save file for ``dump``; returns the names it traces.

    Paths are relative to the save file (the three files move together).
    The view opens on about :data:`VIEW_CYCLES` cycles from cycle ``start``
    (the first request), the clock and the cycle number on top; within a
    stream its payload's fields sit in a group under its ``valid``, the only
    cycles where they mean something.  ``markers``: cycles to mark (the first
    is the primary marker, up to 26 more are named A-Z)."""
    from vcd.gtkw import GTKWSave

    path = Path(path)
    here = path.parent.resolve()

    def rel(p) -> str:
        return os.path.relpath(Path(p).resolve(), here)

    markers = sorted(set(markers))
    traced = []
    with atomic_open(path) as f:
        g = GTKWSave(f)
        g.comment("EPT page-walk unit (sim/flows/gtkwave.py): groups per block, addresses in hex,",
                  "enum-valued signals by name through the translate filters next to this file;",
                  "a stream's payload is grouped under its valid")
        # written by hand: GTKWSave.dumpfile/savefile would make the paths absolute
        f.write(f'[dumpfile] "{rel(dump)}"\n')
        f.write(f'[savefile] "{path.name}"\n')
        g.timestart(max(0, edge_ps((start or 0) - 4)))
        g.zoom_markers(view_zoom(),
                       edge_ps(markers[0]) if markers else -1,
                       **{chr(ord("a") + i): edge_ps(c) for i, c in enumerate(markers[1:27])})
        g.size(1600, 1000)
        g.signals_width(340)
        g.treeopen(".".join(TOP) + ".")

        def trace(value, group):
            if isinstance(value, str):        # a plain name in the unit's scope (clk, cycle)
                full = ".".join(TOP + (value,))
                g.trace(full + ("[31:0]" if value == "cycle" else ""), datafmt="dec")
                traced.append(full + ("[31:0]" if value == "cycle" else ""))
                return
            for full, width, enum_info in names.vars_of(value):
                if enum_info is not None:
                    g.trace(full, datafmt="hex", translate_filter_file=rel(filters[enum_info.name]))
                elif width > 1:
                    g.trace(full, datafmt="dec" if group in ("counters", "clock") else "hex")
                else:
                    g.trace(full)
                traced.append(full)

        for group, values in groups.items():
            with g.group(group):
                pending_valid = None
                for value in values:
                    if isinstance(value, str):
                        trace(value, group)
                        continue
                    if _is_stream_member(value, "payload") and pending_valid is not None:
                        with g.group(f"{pending_valid} payload (when valid)", closed=False):
                            trace(value, group)
                        continue
                    if _is_stream_member(value, "valid"):
                        pending_valid = Value.cast(value).name[:-len("__valid")]
                    trace(value, group)
    return traced


# -- the transaction log ----------------------------------------------------------------

def write_txn_log(path: Path, tickets: Iterable) -> int:
    """One line per translation: cycles in/out, GPA, access, outcome, HPA or
    qualification, levels walked, A/D CAS retries."""
    rows = [f"{'in':>8} {'out':>8} {'lat':>4} {'tag':>3}  {'gpa':<14} {'access':<6} "
            f"{'outcome':<10} {'result':<26} {'levels':>6} {'retries':>7}"]
    n = 0
    for t in tickets:
        if t.outcome is not None:
            outcome = t.outcome.value
        else:
            outcome = "refused"
        if t.hpa is not None:
            result = f"hpa={t.hpa:#x}/{_size(t.page_size)}"
        elif t.qual is not None:
            result = f"qual={t.qual:#04x}"
        else:
            result = "-"
        rows.append(f"{t.accepted:>8} {t.answered:>8} {t.answered - t.accepted:>4} {t.tag:>3}  "
                    f"{t.gpa:#014x} {t.access.name.lower():<6} {outcome:<10} {result:<26} "
                    f"{t.level if t.level is not None else '-':>6} {t.retries:>7}")
        n += 1
    write_atomic(path, "\n".join(rows) + "\n")
    return n


def _size(page_size: int | None) -> str:
    return {1 << 12: "4K", 1 << 21: "2M", 1 << 30: "1G"}.get(page_size, str(page_size))


# -- everything around a dump ---------------------------------------------------------------

def finish_waveform(dump: Path, dut, tickets: Iterable, markers: Iterable[int] = ()) -> Path:
    """Write the save file, the filters and the transaction log next to
    ``dump`` (``X.gtkw``, ``X.filters/``, ``X.txn.log``); returns the save file."""
    dump = Path(dump)
    names = WaveNames(dut)
    filters = write_filters(dump.with_suffix(".filters"), names.enums())
    gtkw = dump.with_suffix(".gtkw")
    tickets = list(tickets)
    first = min((t.accepted for t in tickets if t.accepted is not None), default=0)
    write_save_file(gtkw, dump, names, trace_groups(dut), filters, markers, start=first)
    write_txn_log(dump.with_suffix(".txn.log"), tickets)
    return gtkw
