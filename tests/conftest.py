"""Suite-wide settings.

One thread per process: several tests start other processes (data-parallel ranks, a training run that is
killed, notebook kernels), and on a shared CPU torch processes that each use every core slow one another down
by an order of magnitude. Set before any test module imports torch; an explicit setting wins.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
