"""transferkit: which pretrained model should I use, how should I adapt it, how good is it, how do I ship it."""

import os as _os

# OpenMP threads that wait for work spin by default, and on a shared machine (a cluster node, a laptop, a
# 2-core box) a spinning thread steals the core its partner needs: the same compare took 64 s instead of 20.
# A passive wait policy costs nothing measurable when the machine is idle. Set before torch loads its OpenMP
# runtime (transferkit imports torch lazily); a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
