import os

# numpy's BLAS would start a thread per core at import (it burns the core the
# scoreboard's process and the compiles want); this package does no linear algebra
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from .cli import main  # noqa: E402

raise SystemExit(main())
