import os
import sys

# numpy's BLAS would start a thread per core at import (it burns the core the
# scoreboard's process and the compiles want); this package does no linear algebra
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# A checkout that cannot be written (a read-only clone, another user's) would
# recompile every module on every run: keep the bytecode in the user's cache
if sys.pycache_prefix is None and not os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
    sys.pycache_prefix = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                      "ept-walker", "pycache")

from .cli import main  # noqa: E402

raise SystemExit(main())
