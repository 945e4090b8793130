"""``python -m sim.verify.sweep_job ARGS``: ``python -m sim ARGS`` as one job of a sweep.

The same command, with one difference: on Linux the process asks to be
killed when the worker thread that started it goes away (``PR_SET_PDEATHSIG``),
so a worker that is stopped, killed or cancelled leaves no campaign running
behind it.  (Set here, after the exec, rather than in a ``preexec_fn``, which
is unsafe in a multi-threaded Dask worker.)
"""

from __future__ import annotations

import sys


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):           # pragma: no cover - not glibc
        pass


def main() -> int:
    _die_with_parent()
    from sim.cli import main as cli_main
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
