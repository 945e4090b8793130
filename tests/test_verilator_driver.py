"""driver.cpp and the Python harness agree on the stop codes and flag indices.

The compiled loop returns a ``Stop`` code and fills ``Status.flags`` by
``Flag`` index; both are C++ enums mirrored by name in
``sim/backends/verilator/harness.py``.  Read from the source, so a change on
one side only fails here, not as a silent misreading at run time.
"""

import re
from pathlib import Path

from sim.backends.verilator.harness import Flag, Status, Stop
from sim.backends.verilator.build import DRIVER


def cpp_enum(name: str) -> dict[str, int]:
    text = DRIVER.read_text()
    body = re.search(rf"enum {name} : int \{{(.*?)\}};", text, re.S).group(1)
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+) = (\d+),", body)}


def test_stop_codes_match_by_name():
    cpp = cpp_enum("Stop")
    assert cpp == {f"STOP_{s.name}": s.value for s in Stop}


def test_flag_indices_match_by_name():
    cpp = cpp_enum("Flag")
    count = cpp.pop("FLAG_COUNT")
    assert cpp == {f"FLAG_{f.name}": f.value for f in Flag}
    assert count == len(Flag) == Status.flags.size     # one byte per flag in the shared Status


def test_every_stop_code_is_returned_by_sim_run():
    text = DRIVER.read_text()
    run = text[text.index("int sim_run("):]
    run = run[:run.index("\n}\n")]
    returned = set(re.findall(r"return (STOP_\w+);", run))
    assert returned == {f"STOP_{s.name}" for s in Stop}
    assert not re.search(r"return \d+;", run), "sim_run returns a bare number"


def test_driver_is_beside_the_harness():
    assert DRIVER == Path(__file__).resolve().parents[1] / "sim" / "backends" / "verilator" / "driver.cpp"


def test_port_word_counts_match():
    from sim.backends.verilator import harness
    cpp = dict(re.findall(r"constexpr int (\w+_WORDS) = (\d+);", DRIVER.read_text()))
    for name in ("COUNTER_WORDS", "NESTED_COUNTER_WORDS", "LRESP_WORDS", "INVVPID_WORDS"):
        assert int(cpp[name]) == getattr(harness, name), name
    # the shared Status's arrays, in bytes
    assert int(cpp["TRESP_WORDS"]) * 4 == Status.tresp.size
    assert int(cpp["LRESP_WORDS"]) * 4 == Status.lresp.size
    assert int(cpp["INVVPID_WORDS"]) * 4 == Status.in_invvpid_payload.size


def test_port_word_counts_fit_the_layouts():
    from amaranth.hdl import Shape

    import hw.layouts as hl
    from sim.backends.verilator import harness
    words = lambda layout: -(-Shape.cast(layout).width // 32)
    assert words(hl.PerfCounters) == harness.COUNTER_WORDS
    assert words(hl.NestedCounters) == harness.NESTED_COUNTER_WORDS
    assert words(hl.LinearResponse) == harness.LRESP_WORDS
    assert words(hl.InvvpidRequest) == harness.INVVPID_WORDS
    assert words(hl.TranslateResponse) * 4 == Status.tresp.size
    assert Shape.cast(hl.LinearRequest).width <= 64 >= Shape.cast(hl.TranslateRequest).width  # one word each
