"""CuPy adapter: eager loops on the GPU; the convergence check is the only host sync."""

from __future__ import annotations

from otcore.backends.base import Adapter


class CupyAdapter(Adapter):
    """Adapter for ``cupy.ndarray`` inputs."""

    name = "cupy"
