"""Writing output files atomically: a reader never sees half a file.

Every report, summary, waveform save file and reproducer the tools write
goes through :func:`atomic_open`: the text goes to a temporary file beside
the target, which is renamed into place only when it is complete.  A
failure leaves the old file (or no file) and no temporary behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "write_atomic", "write_json", "provenance", "CACHE_ENV", "cache_dir",
           "dist_versions"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        # mkstemp makes the file private (0600); give it a normal file's mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    """Write ``data`` as JSON (one trailing newline) to ``path`` atomically."""
    write_atomic(path, json.dumps(data, indent=indent) + "\n")


def provenance(schema_version: int) -> dict:
    """What a report says about where it came from: schema, tool version, git revision, time."""
    import datetime
    import subprocess
    from importlib import metadata
    try:
        version = metadata.version("ept-walker")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        rev = None
    return {"schema_version": schema_version, "tool": "ept-walker", "tool_version": version,
            "git_revision": rev,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# -- the per-user cache: derived artefacts shared by every clone (Verilator builds, port tables)
CACHE_ENV = "EPT_WALKER_BUILD_CACHE"


def cache_dir() -> Path:
    """The per-user build cache: ``$EPT_WALKER_BUILD_CACHE``, else
    ``${XDG_CACHE_HOME:-~/.cache}/ept-walker/verilator``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "ept-walker" / "verilator"


def dist_versions(*packages: str) -> str:
    """The installed versions of the packages (``name-version.dist-info``
    beside each), without importing them: Amaranth alone takes 0.1 s."""
    import importlib.util
    out = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            out.append(f"{name}-absent")
            continue
        site = Path(spec.origin).parent.parent
        found = sorted(p.name for p in site.glob(f"{name}-*.dist-info"))
        if not found:
            import importlib.metadata
            try:
                found = [importlib.metadata.version(name)]
            except importlib.metadata.PackageNotFoundError:
                found = ["unknown"]
        out.append(found[-1])
    return " ".join(out)
