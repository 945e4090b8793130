"""``build/reliability/report.json``: the figures of the last fuzz, races and
soak runs, one section each (each command rewrites its own section)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sim.files import write_json

__all__ = ["REPORT", "update_report"]

REPORT = Path("build/reliability/report.json")


def update_report(section: str, data: dict, path: Path = REPORT) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict):
            report = {}
    except (OSError, ValueError):
        report = {}
    old = report.get(section)
    report[section] = dict(data, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(path, report, indent=1)
    if isinstance(old, dict):
        # a run by hand replaces what `make reliability` wrote: say so, naming what was there
        was = old.get("options") or {}
        print(f"note: {path}: replaced the {section} section of {old.get('finished', 'an earlier run')}"
              + (f" ({', '.join(f'{k} {v}' for k, v in was.items() if k != 'unit')})" if was else ""),
              file=sys.stderr)
    return path
