"""dualnorm: normalization layers on NumPy and MLX, with explicit forward and backward.

>>> import numpy as np, dualnorm
>>> dualnorm.set_backend("numpy").name
'numpy'
>>> bn = dualnorm.nn.BatchNorm1d(1)
>>> y = bn(np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]))
>>> [round(float(v), 4) for v in dualnorm.to_numpy(y).ravel()]
[-1.4638, -0.8783, -0.2928, 0.2928, 0.8783, 1.4638]
"""

from dualnorm import nn
from dualnorm._rng import manual_seed
from dualnorm.backends import available_backends, get_backend, set_backend, to_numpy, use_backend
from dualnorm.checkpoint import CheckpointError, load, load_into, save
from dualnorm.errors import BackendError, DualnormError, InputError, StateError
from dualnorm.runlog import load_run, save_run
from dualnorm.tracking import Run, list_runs, read_run, track

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CheckpointError",
    "DualnormError",
    "InputError",
    "Run",
    "StateError",
    "__version__",
    "available_backends",
    "get_backend",
    "list_runs",
    "load",
    "load_into",
    "load_run",
    "manual_seed",
    "nn",
    "read_run",
    "save",
    "save_run",
    "set_backend",
    "to_numpy",
    "track",
    "use_backend",
]
