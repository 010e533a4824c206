"""Potential networks written once in array API code, with explicit parameters.

A network is a small description (sizes, options) plus two functions: ``init_params``
draws the parameters (a nested dict of arrays in the data's namespace, dtype and device)
and ``apply(params, x)`` evaluates the network on a batch ``x`` of shape ``(n, d)``. A
*potential* network (``is_potential=True``) returns the values ``f(x)`` (shape ``(n,)``);
a *gradient* network returns the map ``∇f(x)`` directly (shape ``(n, d)``).

The initial parameters are drawn with NumPy's ``default_rng(seed)`` and then converted,
so that one seed gives the same network on every framework.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from otcore._lib import xp as _xp

__all__ = ["ICNN", "PotentialMLP"]


# -- elementwise helpers (array API) ------------------------------------------------------


def _relu(xp, x):
    return xp.where(x > 0, x, xp.zeros_like(x))


def _leaky_relu(xp, x, slope=0.01):
    return xp.where(x > 0, x, slope * x)


def _softplus(xp, x):
    return xp.log1p(xp.exp(-xp.abs(x))) + _relu(xp, x)


def _safe_frobenius(xp, w):
    """``‖w‖_F`` with a zero (not NaN) derivative at ``w = 0``."""
    s = xp.sum(w * w)
    pos = s > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, s, xp.ones_like(s))), xp.zeros_like(s))


def _lecun_normal(rng, shape, fan_in):
    """Truncated (±2σ) normal with variance ``1 / fan_in`` (flax's ``lecun_normal``)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * (math.sqrt(1.0 / fan_in) / 0.8796256610342398)


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def _convert(xp, tree, dtype, device):
    if isinstance(tree, dict):
        return {k: _convert(xp, v, dtype, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_convert(xp, v, dtype, device) for v in tree]
    return xp.asarray(tree, dtype=dtype, device=device)


def _sqrtm_psd(xp, m):
    w, v = xp.linalg.eigh((m + xp.matrix_transpose(m)) / 2)
    w = xp.where(w > 0, w, xp.zeros_like(w))
    return (v * xp.sqrt(w)[None, :]) @ xp.matrix_transpose(v)


def _inv_sqrtm_pd(xp, m):
    w, v = xp.linalg.eigh((m + xp.matrix_transpose(m)) / 2)
    return (v / xp.sqrt(w)[None, :]) @ xp.matrix_transpose(v)


def gaussian_map(source, target):
    """Bures map ``x ↦ A x + b`` between the Gaussian fits of two samples (array API).

    ``A = Σs^{-1/2}(Σs^{1/2} Σt Σs^{1/2})^{1/2} Σs^{-1/2}`` and ``b = m_t − A m_s``; a
    small ridge (``1e-6`` times the mean variance) keeps ``Σs`` invertible.

    Args:
        source: samples ``(n, d)`` of the source measure.
        target: samples ``(m, d)`` of the target measure.

    Returns:
        ``(A, b)`` in the samples' namespace, dtype and device.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((4000, 2))
        >>> A, b = gaussian_map(x, 2.0 * x + 1.0)
        >>> bool(np.allclose(A, 2.0 * np.eye(2), atol=1e-5) and np.allclose(b, 1.0))
        True
    """
    xp = _xp.namespace(source, target, names=["source", "target"])
    dev = _xp.device_of(source)

    def moments(s):
        m = xp.mean(s, axis=0)
        c = s - m[None, :]
        return m, xp.matrix_transpose(c) @ c / (s.shape[0] - 1)

    ms, cs = moments(source)
    mt, ct = moments(target)
    d = source.shape[1]
    eye = xp.eye(d, dtype=source.dtype, device=dev)
    cs = cs + 1e-6 * (xp.linalg.trace(cs) / d) * eye
    s_half = _sqrtm_psd(xp, cs)
    s_inv_half = _inv_sqrtm_pd(xp, cs)
    a = s_inv_half @ _sqrtm_psd(xp, s_half @ ct @ s_half) @ s_inv_half
    a = (a + xp.matrix_transpose(a)) / 2
    return a, mt - a @ ms


# -- layers -----------------------------------------------------------------------------


def _posdef_init(rng, dim, num, rank, diag0):
    """Parameters of ``num`` quadratic potentials ``½xᵀ(AAᵀ + diag(d))x + bᵀx + c``."""
    p = {"diag": np.full((dim, num), diag0)}
    if rank > 0:
        p["quad"] = _lecun_normal(rng, (dim, num, rank), fan_in=dim * num)
    p["lin"] = _lecun_normal(rng, (dim, num), fan_in=dim)
    p["bias"] = np.zeros((num,))
    return p


def _posdef_apply(xp, p, x, rectifier):
    """``(n, num)`` values of the quadratic potentials of :func:`_posdef_init`."""
    y = 0.5 * ((x * x) @ rectifier(xp, p["diag"]))
    if "quad" in p:
        dim, num, rank = p["quad"].shape
        q = x @ xp.reshape(p["quad"], (dim, num * rank))
        y = y + 0.5 * xp.sum(xp.reshape(q * q, (x.shape[0], num, rank)), axis=-1)
    return y + x @ p["lin"] + p["bias"][None, :]


def _check_dims(dim_data, dim_hidden):
    if isinstance(dim_data, bool) or not isinstance(dim_data, numbers.Integral) or dim_data < 1:
        raise ValueError(f"dim_data must be a positive integer, got {dim_data!r}")
    hidden = tuple(dim_hidden)
    if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ValueError(f"dim_hidden must hold positive integers, got {dim_hidden!r}")
    return int(dim_data), tuple(int(h) for h in hidden)


# -- networks ---------------------------------------------------------------------------


@dataclass
class ICNN:
    """Input-convex neural network potential ``f(x)`` (Amos, Xu & Kolter 2017).

    ``z₁ = relu(Q₀(x))``, ``z_{k+1} = relu(W_k z_k + Q_k(x))`` and
    ``f(x) = z_{K+1} + Q(x)``, where each unit of ``Q_k`` is a convex quadratic
    ``½xᵀ(AAᵀ + diag(softplus(d)))x + bᵀx + c`` (low-rank ``A`` of rank ``ranks``) and the
    final ``Q`` is a single such quadratic. ``f`` is convex when every ``W_k ≥ 0``: with
    ``pos_weights=True`` the network uses ``relu(W_k)``; with ``pos_weights=False`` it
    uses ``W_k`` as is and :class:`W2NeuralDual` adds ``β·Σ‖relu(−W_k)‖_F`` to the loss and
    clips ``f``'s ``W_k`` to ``≥ 0`` after each step (as OTT-JAX does).

    Args:
        dim_data: dimension ``d`` of the data.
        dim_hidden: widths of the hidden layers (the last layer has width 1).
        ranks: rank of the low-rank factors of the input quadratics.
        pos_weights: use ``relu(W_k)`` (convex by construction) or raw ``W_k``.
        init: ``"identity"``: the final quadratic is ``½‖x‖²``, so ``∇f ≈ id`` at first;
            ``"gaussian"``: it is the Bures (linear) map between Gaussian fits of the two
            measures, from ``gaussian_map_samples`` or, when these are not given, from the
            first training batches.
        gaussian_map_samples: optional ``(source, target)`` sample arrays for ``init="gaussian"``.

    Example:
        >>> import numpy as np
        >>> net = ICNN(2, dim_hidden=(8, 8))
        >>> params = net.init_params(np, np.float64, "cpu", seed=0)
        >>> net.apply(params, np.ones((3, 2))).shape
        (3,)
    """

    dim_data: int
    dim_hidden: tuple = (64, 64, 64, 64)
    ranks: int = 1
    pos_weights: bool = True
    init: str = "identity"
    gaussian_map_samples: tuple | None = field(default=None, repr=False)

    is_potential = True

    def __post_init__(self):
        self.dim_data, self.dim_hidden = _check_dims(self.dim_data, self.dim_hidden)
        if not self.dim_hidden:
            raise ValueError("dim_hidden must hold at least one width for an ICNN")
        if self.init not in ("identity", "gaussian"):
            raise ValueError(f"init must be 'identity' or 'gaussian', got {self.init!r}")
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, numbers.Integral):
            raise ValueError(f"ranks must be a non-negative integer, got {self.ranks!r}")
        if self.ranks < 0:
            raise ValueError(f"ranks must be a non-negative integer, got {self.ranks!r}")
        if self.gaussian_map_samples is not None and len(self.gaussian_map_samples) != 2:
            raise ValueError("gaussian_map_samples must be a pair (source, target)")

    def init_params(self, xp, dtype, device, seed=0, samples=None):
        """Draw the parameters (nested dict) in namespace ``xp`` with ``dtype``/``device``.

        Args:
            xp: array namespace of the data.
            dtype, device: dtype and device of the data.
            seed: integer seed or a ``numpy.random.Generator``.
            samples: ``(source, target)`` used by ``init="gaussian"`` when
                ``gaussian_map_samples`` was not given.

        Example:
            >>> import numpy as np
            >>> p = ICNN(3, dim_hidden=(4,)).init_params(np, np.float32, "cpu")
            >>> sorted(p), p["w_z"][0].shape
            (['final', 'w_x', 'w_z'], (4, 1))
        """
        rng = _rng(seed)
        d, widths = self.dim_data, [*self.dim_hidden, 1]
        params = {
            "w_x": [_posdef_init(rng, d, w, self.ranks, -2.0) for w in widths],
            "w_z": [
                _lecun_normal(rng, (w_in, w_out), fan_in=w_in)
                for w_in, w_out in itertools.pairwise(widths)
            ],
        }
        gaussian = self.init == "gaussian"
        final = {"diag": np.full((d, 1), 0.0 if gaussian else 1.0)}
        if not gaussian:
            final["quad"] = np.zeros((d, 1, 1))
        final["lin"] = np.zeros((d, 1))
        final["bias"] = np.zeros((1,))
        params["final"] = final
        params = _convert(xp, params, dtype, device)
        if gaussian:
            pair = self.gaussian_map_samples if self.gaussian_map_samples is not None else samples
            if pair is None:
                raise ValueError(
                    "init='gaussian' needs gaussian_map_samples=(source, target) or the "
                    "first training batches"
                )
            src, tgt = (xp.asarray(s, dtype=dtype, device=device) for s in pair)
            a, b = gaussian_map(src, tgt)
            params["final"]["quad"] = xp.reshape(_sqrtm_psd(xp, a), (d, 1, d))
            params["final"]["lin"] = xp.reshape(b, (d, 1))
        return params

    def apply(self, params, x):
        """Potential values ``f(x)``, shape ``(n,)``, for a batch ``x`` of shape ``(n, d)``.

        Example:
            >>> import numpy as np
            >>> net = ICNN(2, dim_hidden=(4,))
            >>> float(net.apply(net.init_params(np, np.float64, "cpu"), np.zeros((1, 2)))[0])
            0.0
        """
        xp = _xp.namespace(x)
        w_x, w_z = params["w_x"], params["w_z"]
        z = _relu(xp, _posdef_apply(xp, w_x[0], x, _softplus))
        for wz, wx in zip(w_z, w_x[1:]):
            kernel = _relu(xp, wz) if self.pos_weights else wz
            z = _relu(xp, z @ kernel + _posdef_apply(xp, wx, x, _softplus))
        z = z + _posdef_apply(xp, params["final"], x, _relu)
        return z[:, 0]

    def weight_penalty(self, params):
        """``Σ_k ‖relu(−W_k)‖_F`` (0 with ``pos_weights=True``).

        Example:
            >>> import numpy as np
            >>> net = ICNN(2, dim_hidden=(4, 4), pos_weights=False)
            >>> float(net.weight_penalty(net.init_params(np, np.float64, "cpu"))) > 0
            True
        """
        w_z = params["w_z"]
        xp = _xp.namespace(*w_z)
        if self.pos_weights:
            return xp.sum(w_z[0]) * 0
        return sum(_safe_frobenius(xp, _relu(xp, -w)) for w in w_z)

    def project(self, params):
        """``params`` with every ``W_k`` clipped to ``≥ 0`` (when ``pos_weights=False``).

        Example:
            >>> import numpy as np
            >>> net = ICNN(2, dim_hidden=(4, 4), pos_weights=False)
            >>> p = net.project(net.init_params(np, np.float64, "cpu"))
            >>> bool((p["w_z"][0] >= 0).all())
            True
        """
        if self.pos_weights:
            return params
        xp = _xp.namespace(*params["w_z"])
        return {**params, "w_z": [_relu(xp, w) for w in params["w_z"]]}


@dataclass
class PotentialMLP:
    """Non-convex MLP potential (leaky-ReLU), as OTT-JAX's ``PotentialMLP``.

    With ``is_potential=True`` it returns ``MLP(x) + ½‖x‖²`` (a scalar per point); with
    ``is_potential=False`` it models the gradient map directly, ``x + MLP(x)`` (a vector
    per point), and its "value" is recovered through the other potential (Amos 2023).

    Args:
        dim_data: dimension ``d`` of the data.
        dim_hidden: widths of the hidden layers.
        is_potential: return values (``True``) or the gradient map (``False``).

    Example:
        >>> import numpy as np
        >>> net = PotentialMLP(2, dim_hidden=(8,), is_potential=False)
        >>> net.apply(net.init_params(np, np.float64, "cpu"), np.ones((3, 2))).shape
        (3, 2)
    """

    dim_data: int
    dim_hidden: tuple = (64, 64, 64, 64)
    is_potential: bool = True

    def __post_init__(self):
        self.dim_data, self.dim_hidden = _check_dims(self.dim_data, self.dim_hidden)

    def init_params(self, xp, dtype, device, seed=0, samples=None):
        """Draw the parameters (see :meth:`ICNN.init_params`).

        Example:
            >>> import numpy as np
            >>> p = PotentialMLP(3, dim_hidden=(4,)).init_params(np, np.float32, "cpu")
            >>> p["out"]["w"].shape
            (4, 1)
        """
        rng = _rng(seed)
        sizes = [self.dim_data, *self.dim_hidden]
        layers = [
            {"w": _lecun_normal(rng, (a, b), fan_in=a), "b": np.zeros((b,))}
            for a, b in itertools.pairwise(sizes)
        ]
        n_out = 1 if self.is_potential else self.dim_data
        out = {
            "w": _lecun_normal(rng, (sizes[-1], n_out), fan_in=sizes[-1]),
            "b": np.zeros((n_out,)),
        }
        return _convert(xp, {"layers": layers, "out": out}, dtype, device)

    def apply(self, params, x):
        """Values ``(n,)`` if ``is_potential`` else the map ``(n, d)``.

        Example:
            >>> import numpy as np
            >>> net = PotentialMLP(2, dim_hidden=(4,))
            >>> net.apply(net.init_params(np, np.float64, "cpu"), np.ones((5, 2))).shape
            (5,)
        """
        xp = _xp.namespace(x)
        z = x
        for layer in params["layers"]:
            z = _leaky_relu(xp, z @ layer["w"] + layer["b"][None, :])
        z = z @ params["out"]["w"] + params["out"]["b"][None, :]
        if self.is_potential:
            return z[:, 0] + 0.5 * xp.sum(x * x, axis=-1)
        return x + z

    def weight_penalty(self, params):
        """0: an MLP has no convexity constraint."""
        return _zero(params)

    def project(self, params):
        """``params`` unchanged."""
        return params


def _zero(params):
    """A 0-d zero in the parameters' namespace and dtype."""
    leaf = params["out"]["b"]
    xp = _xp.namespace(leaf)
    return xp.sum(leaf) * 0
