"""Each kernel test runs once per NumPy kernel table: the NumPy kernels and the numba ones.

On the NumPy backend the ``default`` run installs ``kernels_numpy.KERNELS`` (what runs
without numba) and the ``numba`` run installs ``kernels_numba.KERNELS`` with the size
threshold at 0, so even the small shapes go through the compiled code. MLX keeps its
own table and runs once. Without numba the ``numba`` runs skip.
"""

from __future__ import annotations

import os

import pytest

import dualnorm
from dualnorm.backends import kernels_numba, kernels_numpy

HAS_NUMBA = kernels_numba.available()


@pytest.fixture(
    params=[
        "default",
        pytest.param("numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")),
    ],
    autouse=True,
)
def kernel_table(request, monkeypatch):
    """Name of the kernel table under test ("default" or "numba")."""
    if "backend" not in request.fixturenames:
        if request.param != "default":
            pytest.skip("not a backend test")
        return request.param
    request.getfixturevalue("backend")
    B = dualnorm.get_backend()
    if B.name != "numpy":
        if request.param != "default":
            pytest.skip("numba kernels are for the NumPy backend")
        return request.param
    if request.param == "numba":
        monkeypatch.setattr(kernels_numba, "MIN_ELEMENTS", 0)
        monkeypatch.setattr(B, "kernels", dict(kernels_numba.KERNELS))
    elif os.environ.get("DUALNORM_KERNELS", "").strip().lower() != "reference":
        monkeypatch.setattr(B, "kernels", dict(kernels_numpy.KERNELS))
    return request.param
