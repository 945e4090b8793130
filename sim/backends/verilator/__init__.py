"""The ``verilator`` backend: the unit's generated Verilog compiled with Verilator."""

from sim.backends.verilator.build import BuildResult, build_model, check_trace_headers, toolchain
from sim.backends.verilator.harness import VerilatorBackend, VerilatorHarness

__all__ = ["BuildResult", "VerilatorBackend", "VerilatorHarness", "build_model", "check_trace_headers",
           "toolchain"]
