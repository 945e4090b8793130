"""Verilog generation for the page-walk unit (``python -m sim verilog``).

The top (``--top``) is by default the nested AXI one (``axi``:
:class:`hw.axi_top.NestedWalkerAxi`: the guest walker over the EPT unit, with
an AXI4 master for memory and an AXI4-Lite slave for its registers); ``ept-axi``
is the EPT unit alone behind the same AXI ports (:class:`hw.axi_top.EptWalkerAxi`),
``native`` the EPT unit itself (:class:`hw.top.PageWalkUnit`, its native
memory port) and ``nested`` the nested unit itself
(:class:`hw.nested_top.NestedWalkUnit`).  The parameter options are not written out here: they are the
constructors' keyword parameters (:mod:`sim.unit_params`), so a parameter
added to the unit is an option at once, and the constructor stays the one
place that checks them (its ``ValueError`` becomes a one-line error).

The text is made reproducible and easy to integrate: ``(* src *)``
attributes name files relative to the checkout (or are left out), the top
module's ports are listed clock and reset first, then interface by
interface in the signature's order, and ``--port-names vivado`` renames the
AXI ports ``m_axi_*`` / ``s_axi_*`` (with the clock ``aclk`` and the reset
``areset``) so that Vivado's IP integrator infers the interfaces.  The file
is written whole or not at all.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sim import unit_params
from sim.files import write_atomic
from sim.options import UsageError, add_unit_options, output_path
from sim.unit_params import Param

__all__ = [
    "TOP_NAME", "DEFAULT_OUT", "TOPS", "DEFAULT_TOP", "ParamError", "Param", "top_class", "parameters",
    "build_top", "generate", "port_table", "tidy",
]

TOP_NAME = "ept_walker"
DEFAULT_OUT = "build/ept_walker.v"
ROOT = Path(__file__).resolve().parents[2]
# --top NAME -> (module in hw/, class)
NESTED_AXI_TOP = ("axi_top", "NestedWalkerAxi")
NESTED_TOP = ("nested_top", "NestedWalkUnit")
TOPS = {"axi": NESTED_AXI_TOP, "ept-axi": unit_params.AXI_TOP, "native": unit_params.NATIVE_TOP,
        "nested": NESTED_TOP}
DEFAULT_TOP = "axi"
AXI_TOPS = ("axi", "ept-axi")          # the tops with AXI ports (and the AXI top's own parameters)
NESTED_TOPS = ("axi", "nested")        # the tops with the nested unit (and its own parameters)
# Vivado's interface inference: an AXI master's ports as m_axi_*, a slave's as s_axi_*
VIVADO_PREFIXES = {"mem__": "m_axi_", "csr__": "s_axi_"}


class ParamError(Exception):
    """A parameter the top class refused: reported in one line, exit 2."""


def top_class(top: str = DEFAULT_TOP):
    """The class whose instance is the ``ept_walker`` module (imports Amaranth)."""
    import importlib
    module, cls = TOPS[top]
    return getattr(importlib.import_module(f"hw.{module}"), cls)


def parameters(top: str = DEFAULT_TOP) -> tuple[Param, ...]:
    """The top's parameters, its own first, then those it passes on to the unit."""
    return unit_params.parameters(*TOPS[top])


def build_top(params: dict | None = None, top: str = DEFAULT_TOP, *, elaborate=True, cls=None):
    """An instance of the top; a refused parameter raises :class:`ParamError`.

    ``elaborate=False``: the instance is only checked or inspected, so Amaranth
    is told not to warn that it (and its blocks) were never elaborated.
    """
    cls = top_class(top) if cls is None else cls
    try:
        return cls(**(params or {})) if elaborate else unit_params.check_instance(cls, params or {})
    except ValueError as e:
        raise ParamError(str(e)) from None


def _describe(params: dict, top: str) -> str:
    full = {p.name: p.default for p in parameters(top)}
    full.update(params)
    return " ".join(f"{k}={v}" for k, v in full.items())


def _port_order(instance) -> list[str]:
    """The top's port names: clock and reset, then the signature's members in order."""
    return ["clk", "rst"] + ["__".join(map(str, path)) for path, _, _ in instance.signature.flatten(instance)]


def tidy(text: str, ports: list[str], *, src: str = "relative", port_names: str = "amaranth") -> str:
    """Make Amaranth's Verilog reproducible and readable.

    ``src``: ``relative`` (paths in ``(* src *)`` relative to the checkout),
    ``none`` (no source attributes) or ``absolute`` (as Amaranth writes them).
    ``ports``: the top module's ports in the order its header should list them.
    ``port_names``: ``vivado`` renames them as :data:`VIVADO_PREFIXES` says.
    """
    if src == "relative":
        text = text.replace(f'(* src = "{ROOT}/', '(* src = "')
    elif src == "none":
        text = re.sub(r"^\s*\(\* src = \"[^\"]*\" \*\)\n", "", text, flags=re.M)
        text = re.sub(r"\(\* src = \"[^\"]*\" \*\) ?", "", text)
    header = re.search(rf"^module {TOP_NAME}\((.*?)\);", text, re.M | re.S)
    listed = [p.strip() for p in header.group(1).replace("\n", "").split(",")]
    if sorted(listed) != sorted(ports):
        raise ValueError(f"the top's ports {sorted(set(listed) ^ set(ports))} are not in its signature")
    text = text[:header.start(1)] + "\n    " + ",\n    ".join(ports) + "\n" + text[header.end(1):]
    if port_names == "vivado":
        start = text.index(f"module {TOP_NAME}(")
        end = text.index("endmodule", start)
        body = text[start:end]
        renames = {"clk": "aclk", "rst": "areset"}
        for p in ports:
            for old, new in VIVADO_PREFIXES.items():
                if p.startswith(old):
                    renames[p] = new + p[len(old):]
        # whole identifiers, not an instance's pin names (``.clk(clk)`` keeps its ``.clk``)
        body = re.sub(r"(?<![.\w$\\])(" + "|".join(map(re.escape, renames)) + r")\b",
                      lambda m: renames[m.group(1)], body)
        # the clock's bus association and the reset's polarity, for the IP integrator
        busif = ":".join(new.rstrip("_") for old, new in VIVADO_PREFIXES.items()
                         if any(p.startswith(old) for p in ports))
        body = re.sub(r"^(\s*)input aclk;", rf'\1(* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF {busif}, '
                                           r'ASSOCIATED_RESET areset" *)\n\1input aclk;', body, count=1, flags=re.M)
        body = re.sub(r"^(\s*)input areset;", r'\1(* X_INTERFACE_PARAMETER = "POLARITY ACTIVE_HIGH" *)\n'
                                             r'\1input areset;', body, count=1, flags=re.M)
        text = text[:start] + body + text[end:]
    return text


def generate(params: dict | None = None, top: str = DEFAULT_TOP, *, src: str = "relative",
             port_names: str = "amaranth", cls=None) -> str:
    """The Verilog text of the top with ``params``, top module :data:`TOP_NAME`."""
    from amaranth.back import verilog
    params = dict(params or {})
    instance = build_top(params, top, cls=cls)
    ports = _port_order(instance)
    try:
        # ports=None: the ports are the component's signature, flattened as
        # name__member (translate_req__valid, translate_req__payload, ...)
        text = verilog.convert(instance, name=TOP_NAME)
    except ValueError as e:       # a parameter the constructor let through but elaboration refused
        raise ParamError(str(e)) from None
    cls = type(instance)
    header = (f"// {TOP_NAME}: {cls.__module__}.{cls.__name__} ({_describe(params, top)})\n"
              f"// Generated by `python -m sim verilog`; do not edit.\n")
    return header + tidy(text, ports, src=src, port_names=port_names)


def port_table(params: dict | None = None, top: str = DEFAULT_TOP) -> str:
    """A Markdown table of the Verilog ports: name, direction, width, payload fields.

    The README's port list is made by this (``python -m sim verilog --ports``),
    so it says what the generated module really has.
    """
    from amaranth.hdl import Shape
    from amaranth.lib import data, wiring
    instance = build_top(params, top, elaborate=False)
    rows = ["| port | dir | bits | fields (lsb first) |", "|---|---|---|---|",
            "| `clk`, `rst` | in | 1 | rising-edge clock; synchronous active-high reset |"]
    for path, member, _value in instance.signature.flatten(instance):
        name = "__".join(map(str, path))
        width = Shape.cast(member.shape).width
        fields = ""
        layout = member.shape
        if isinstance(layout, data.Layout):
            parts = []
            for fname, field in layout:
                w = Shape.cast(field.shape).width
                hi = field.offset + w - 1
                bits = f"[{field.offset}]" if w == 1 else f"[{hi}:{field.offset}]"
                parts.append(f"`{fname}`{bits}")
            fields = ", ".join(parts)
        direction = "in" if member.flow == wiring.In else "out"
        rows.append(f"| `{name}` | {direction} | {width} | {fields} |")
    return "\n".join(rows)


# -- options shared with `synth` ------------------------------------------------------
def _own(top: str) -> list[Param]:
    """The parameters a top class declares itself (not those it forwards)."""
    module, cls = TOPS[top]
    return [q for q in unit_params.parameters(module, cls) if q.owner == cls]


def add_top_options(p: argparse.ArgumentParser) -> None:
    """--top, and every parameter of any top (the unit's, the nested unit's, the AXI tops')."""
    p.add_argument("--top", choices=list(TOPS), default=DEFAULT_TOP,
                   help="axi: the nested unit (guest walker over the EPT unit) with an AXI4 master "
                        "and AXI4-Lite registers (default); ept-axi: the EPT unit alone with the "
                        "same AXI ports; native: the EPT unit with its own memory port; "
                        "nested: the nested unit with its own ports")
    add_unit_options(p, unit_params.parameters(*TOPS["native"]), exclude=(),
                     title="the unit's parameters (PageWalkUnit; checked by its constructor)")
    add_unit_options(p, _own("nested"), exclude=(),
                     title="the nested unit's parameters (NestedWalkUnit; --top axi or nested only)")
    add_unit_options(p, _own("axi"), exclude=(),
                     title="the AXI tops' parameters (--top axi or ept-axi only)")


def top_parameters(args) -> dict:
    """The parameters given for the chosen top; another top's own are refused."""
    given = {d[len("unit_"):]: getattr(args, d) for d in args.given if d.startswith("unit_")}
    for owner_tops, own in ((AXI_TOPS, _own("axi")), (NESTED_TOPS, _own("nested"))):
        names = {q.name for q in own}
        extra = [args.given[f"unit_{n}"] for n in given if n in names]
        if extra and args.top not in owner_tops:
            raise UsageError(f"{extra[0]} is a parameter of the {' and '.join(owner_tops)} tops: "
                             f"it means nothing with --top {args.top}")
    if given.get("caches") is False:
        sized = [args.given[f"unit_{n}"] for n in given if unit_params.CACHE_GEOMETRY(n)]
        if sized:
            raise UsageError(f"{sized[0]} sizes a cache, and --no-caches has none: drop one of them")
    return given


# -- the `verilog` command ---------------------------------------------------------------
ABOUT = dict(help="write the unit as Verilog (top module ept_walker)",
             description="Convert the unit (by default the nested unit with its AXI4 master and "
                         "AXI4-Lite registers; --top chooses another) to Verilog with the given "
                         "parameters; the parameter options are its constructors'.",
             epilog=("examples:\n"
                     "  python -m sim verilog\n"
                     "  python -m sim verilog --out build/ept39.v --maxphyaddr 39 --walkers 4\n"
                     "  python -m sim verilog --top ept-axi --out build/ept_only.v\n"
                     "  python -m sim verilog --top native --src none --out build/pwu.v\n"
                     "  python -m sim verilog --port-names vivado --axi-id-width 6\n"
                     "  python -m sim verilog --ports\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.v",
                   help=f"where to write the Verilog (default {DEFAULT_OUT})")
    p.add_argument("--ports", action="store_true",
                   help="print the port list as a Markdown table instead of writing Verilog")
    p.add_argument("--src", choices=("relative", "none", "absolute"), default="relative",
                   help="(* src *) attributes: file paths relative to the checkout (default: the "
                        "same text from any clone), none, or absolute as Amaranth writes them")
    p.add_argument("--port-names", choices=("amaranth", "vivado"), default="amaranth",
                   help="amaranth: mem__araddr, csr__awaddr, ... (default); vivado: m_axi_araddr, "
                        "s_axi_awaddr, aclk, areset, so the IP integrator infers the AXI interfaces")
    add_top_options(p)


def main(args) -> int:
    params = top_parameters(args)
    if args.port_names == "vivado" and args.top not in AXI_TOPS:
        raise UsageError(f"--port-names vivado names AXI ports: the {args.top} top has none")
    try:
        if args.ports:
            print(port_table(params, args.top))
            return 0
        build_top(params, args.top, elaborate=False)      # refuse bad parameters before creating anything
        output_path("--out", args.out)
        text = generate(params, args.top, src=args.src, port_names=args.port_names)
    except ParamError as e:
        raise UsageError(str(e)) from None
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0
