"""Where derived artefacts are cached per user, and the versions they depend on.

One directory per user, shared by every clone: ``$EPT_WALKER_BUILD_CACHE``,
else ``${XDG_CACHE_HOME:-~/.cache}/ept-walker/verilator`` (the Verilator
builds, their index, and small derived tables such as the port layouts).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "dist_versions", "write_atomic_text"]

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


def write_atomic_text(path: Path, text: str) -> None:
    """Write ``text`` (and a newline) so that a concurrent reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
