"""``build/reliability/report.json``: the figures of the last fuzz, races and
soak runs, one section each (each command rewrites its own section)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path
