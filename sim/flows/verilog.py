"""Verilog generation for the page-walk unit (``python -m sim verilog``).

The command-line options are not written out here: they come from the keyword
parameters of the top class's constructor, so a parameter added to the unit
(TLB sets/ways, walkers, caches, ...) is an option at once.  The constructor
stays the one place that validates them; its ``ValueError`` becomes a one-line
error.  The file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from sim.files import write_atomic
from sim.options import UsageError, output_path

__all__ = [
    "TOP_NAME", "DEFAULT_OUT", "ParamError", "Param", "top_class", "parameters",
    "add_parameter_options", "parameter_values", "build_top", "generate",
    "port_table",
]

TOP_NAME = "ept_walker"
DEFAULT_OUT = "build/ept_walker.v"


class ParamError(Exception):
    """A parameter the top class refused: reported in one line, exit 2."""


def top_class():
    """The class whose instance is the ``ept_walker`` module.

    ``hw.axi_top.EptWalkerAxi``: the unit with an AXI4 master for memory and
    an AXI4-Lite slave for its registers, the bus FPGA interconnects speak.
    Verilog, lint and synthesis all take their top from here.
    """
    from hw.axi_top import EptWalkerAxi
    return EptWalkerAxi


@dataclass(frozen=True)
class Param:
    name: str               # the constructor's keyword
    default: int | bool

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def kind(self) -> type:
        # bool before int: True is an int too
        return bool if isinstance(self.default, bool) else int


def parameters(cls=None) -> list[Param]:
    """Keyword-only constructor parameters with an int or bool default, in order.

    Anything else (positional parameters, other defaults) is not an option:
    the command line can only say numbers and switches.
    """
    cls = top_class() if cls is None else cls
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and isinstance(p.default, (bool, int)):
            out.append(Param(p.name, p.default))
    # a wrapper that passes ``**params`` on says to whom (EptWalkerAxi -> PageWalkUnit)
    inner = getattr(cls, "forwards_params_to", None)
    if inner is not None:
        out += parameters(inner)
    return out


def _integer(text: str) -> int:
    # range checks belong to the constructor; here only "is it a number"
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_parameter_options(parser: argparse.ArgumentParser, cls=None) -> None:
    """One option per parameter; unset options keep the constructor's default."""
    cls = top_class() if cls is None else cls
    g = parser.add_argument_group(f"parameters of {cls.__name__} (checked by its constructor)")
    for p in parameters(cls):
        if p.kind is bool:
            g.add_argument(p.option, dest=f"param_{p.name}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS,
                           help=f"(default {'on' if p.default else 'off'})")
        else:
            g.add_argument(p.option, dest=f"param_{p.name}", type=_integer, metavar="N",
                           default=argparse.SUPPRESS, help=f"(default {p.default})")


def parameter_values(args: argparse.Namespace) -> dict:
    """The parameters given on the command line (only those)."""
    return {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_")}


def build_top(params: dict | None = None, cls=None, *, elaborate=True):
    """An instance of the top class; a refused parameter raises :class:`ParamError`.

    ``elaborate=False``: the instance is only checked or inspected, so Amaranth
    is told not to warn that it was never elaborated.
    """
    from sim.unit_params import check_instance
    cls = top_class() if cls is None else cls
    try:
        return cls(**(params or {})) if elaborate else check_instance(cls, params or {})
    except ValueError as e:
        raise ParamError(str(e)) from None


def _describe(params: dict, cls) -> str:
    full = {p.name: p.default for p in parameters(cls)}
    full.update(params)
    return " ".join(f"{k}={v}" for k, v in full.items())


def generate(params: dict | None = None, cls=None) -> str:
    """The Verilog text of the top with ``params``, top module :data:`TOP_NAME`."""
    from amaranth.back import verilog
    cls = top_class() if cls is None else cls
    params = dict(params or {})
    top = build_top(params, cls)
    try:
        # ports=None: the ports are the component's signature, flattened as
        # name__member (translate_req__valid, translate_req__payload, ...)
        text = verilog.convert(top, name=TOP_NAME)
    except ValueError as e:       # a parameter the constructor let through but elaboration refused
        raise ParamError(str(e)) from None
    header = (f"// {TOP_NAME}: {cls.__module__}.{cls.__name__} ({_describe(params, cls)})\n"
              f"// Generated by `python -m sim verilog`; do not edit.\n")
    return header + text


def port_table(params: dict | None = None, cls=None) -> str:
    """A Markdown table of the Verilog ports: name, direction, width, payload fields.

    The README's port list is made by this (``python -m sim verilog --ports``),
    so it says what the generated module really has.
    """
    from amaranth.hdl import Shape
    from amaranth.lib import data, wiring
    top = build_top(params, cls, elaborate=False)
    rows = ["| port | dir | bits | fields (lsb first) |", "|---|---|---|---|"]
    for path, member, _value in top.signature.flatten(top):
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
    rows.append("| `clk`, `rst` | in | 1 | rising-edge clock; synchronous active-high reset |")
    return "\n".join(rows)


# -- the `verilog` command ---------------------------------------------------------------
ABOUT = dict(help="write the unit as Verilog (top module ept_walker)",
                       description=f"Convert {top_class().__name__} to Verilog with the given "
                                   "parameters; the options below are its constructor's.",
             epilog=("examples:\n"
                     "  python -m sim verilog\n"
                     "  python -m sim verilog --out build/ept39.v --maxphyaddr 39 --walkers 4\n"
                     "  python -m sim verilog --ports\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.v",
                   help=f"where to write the Verilog (default {DEFAULT_OUT})")
    p.add_argument("--ports", action="store_true",
                   help="print the port list as a Markdown table instead of writing Verilog")
    add_parameter_options(p)


def main(args) -> int:
    params = parameter_values(args)
    try:
        if args.ports:
            print(port_table(params))
            return 0
        build_top(params, elaborate=False)      # refuse bad parameters before creating anything
        output_path("--out", args.out)
        text = generate(params)
    except ParamError as e:
        raise UsageError(str(e)) from None
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0
