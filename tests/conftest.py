"""Test configuration: float64 JAX, the ``xp`` backend fixture and the ``gpu`` marker.

``xp`` runs a test once per array library: ``numpy``, ``array_api_strict``, ``jax`` and
``torch`` on the CPU, plus ``cupy``, ``torch-cuda`` and ``jax-gpu`` (marked ``gpu``) on a
machine with a GPU. A library that is not installed, or a GPU that is absent, skips the
parameter; it never fails. The fixture's value is a :class:`_helpers.Backend`:
``xp.to_xp(np_array)`` converts to the backend, ``xp.to_np(array)`` converts back, and
``xp.<name>`` is the namespace's own function.

Hypothesis profiles (``tests/test_properties.py``): ``ci``, the default, deterministic
(``derandomize=True``, no example database, no deadline, no shrinking; 100 examples, which
the property tests scale per backend), and ``long`` (2000 examples, random seeds, with
shrinking), selected with hypothesis's own option ``--hypothesis-profile=long``.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from _helpers import CPU_BACKENDS, GPU_BACKENDS, make_backend

try:  # the property suite's profiles (see the module docstring)
    from hypothesis import HealthCheck, Phase, settings

    settings.register_profile(
        "ci",
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
    )
    settings.register_profile(
        "long",
        max_examples=2000,
        deadline=None,
        derandomize=False,
        print_blob=True,
        suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
    )
    settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a test extra
    settings = None

try:  # accuracy tests run in float64 on every backend, JAX included
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover - jax is optional
    jax = None

_JAX_CACHE_DIR = None


def pytest_configure(config):
    """Load the hypothesis profile (``--hypothesis-profile``, default ``ci``); share XLA
    executables between tests (below)."""
    if settings is not None:
        settings.load_profile(config.getoption("--hypothesis-profile", None) or "ci")
    _share_jax_cache()


def _share_jax_cache():
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
