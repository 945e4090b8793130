"""``build/reliability/report.json``: the figures of the last fuzz, races and
soak runs, one section each (each command rewrites its own section)."""

from __future__ import annotations

import json
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
    report[section] = dict(data, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(path, report, indent=1)
    return path
