"""Test configuration: float64 JAX, the ``xp`` backend fixture and the ``gpu`` marker.

``xp`` runs a test once per array library: ``numpy``, ``array_api_strict``, ``jax`` and
``torch`` on the CPU, plus ``cupy``, ``torch-cuda`` and ``jax-gpu`` (marked ``gpu``) on a
machine with a GPU. A library that is not installed, or a GPU that is absent, skips the
parameter; it never fails. The fixture's value is a :class:`_helpers.Backend`:
``xp.to_xp(np_array)`` converts to the backend, ``xp.to_np(array)`` converts back, and
``xp.<name>`` is the namespace's own function.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from _helpers import CPU_BACKENDS, GPU_BACKENDS, make_backend

try:  # accuracy tests run in float64 on every backend, JAX included
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover - jax is optional
    jax = None

_JAX_CACHE_DIR = None


def pytest_configure(config):
    """Share XLA executables between tests (a session-local compilation cache).

    Every eager otcore solve on JAX traces and compiles its ``lax.while_loop`` afresh
    (new closures each call), which dominates the suite's run time. Identical programs
    (same shapes and options, in different tests) then compile once.
    """
    global _JAX_CACHE_DIR
    if jax is None or jax.config.jax_compilation_cache_dir:
        return
    _JAX_CACHE_DIR = tempfile.mkdtemp(prefix="otcore-tests-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _JAX_CACHE_DIR is not None:
        shutil.rmtree(_JAX_CACHE_DIR, ignore_errors=True)


BACKEND_PARAMS = [pytest.param(name, id=name) for name in CPU_BACKENDS] + [
    pytest.param(name, id=name, marks=pytest.mark.gpu) for name in GPU_BACKENDS
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    """The backend under test (see the module docstring)."""
    return make_backend(request.param)
