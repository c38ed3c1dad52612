"""Merging per-rank batch statistics; the code lives in :mod:`dualnorm.stats`.

It moved there so the NumPy kernels can share :func:`chan_merge` without importing
the distributed package (which imports the backends that load those kernels).
"""

from dualnorm.stats import chan_merge, merge_moments

__all__ = ["chan_merge", "merge_moments"]
