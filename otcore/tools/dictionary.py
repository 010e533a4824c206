"""Wasserstein dictionary learning (Schmitz et al. 2018).

Each sample ``y_m`` (a histogram on the support of a geometry) is approximated by the
entropic barycenter of ``k`` atoms ``D = [d_1 … d_k]`` with its own weights ``w_m``:

    min_{D, W}  (1/M) Σ_m  loss(barycenter(D, w_m), y_m)

Atoms and weights stay on their simplices through a softmax parametrisation
(``d_s = softmax(α_s)``, ``w_m = softmax(λ_m)``) and both are updated by Adam. The
barycenters of all samples are one batched :func:`otcore.barycenter` call; their
gradients come from the framework's autodiff (JAX, PyTorch) or otcore's manual reverse
recursion (NumPy, CuPy). Every sample gets its own weight gradient.

Initial parameters are drawn with NumPy's ``default_rng(seed)`` and converted to the
data's framework, so a NumPy and a PyTorch user fitting the same data with the same seed
get the same dictionary (up to rounding).
"""

from __future__ import annotations

import numbers

import numpy as np

from otcore._lib import checks as _checks
from otcore._lib import xp as _xp
from otcore._lib.adam import Adam
from otcore._lib.progress import progress
from otcore.autodiff.transforms import vjp as _vjp
from otcore.backends import adapter_for
from otcore.errors import NonFiniteIterationError
from otcore.geometry.base import Geometry
from otcore.solvers.barycenter import barycenter
from otcore.solvers.divergence import sinkhorn_divergence_costs

__all__ = ["WassersteinDictionary"]

_LOSSES = ("quadratic", "kl", "wasserstein")


class WassersteinDictionary:
    """Learn ``n_atoms`` histograms whose barycenters reconstruct the data.

    Args:
        n_atoms: number of atoms ``k``.
        epsilon: ε of the barycenters (and of the ``"wasserstein"`` loss) when ``fit`` is
            given a cost matrix (``None``: ``0.05·std(C)``); a geometry carries its own.
        loss: ``"quadratic"`` (``‖b − y‖²``), ``"kl"`` (``Σ y log(y/b) − y + b``) or
            ``"wasserstein"`` (the Sinkhorn divergence ``S_ε(b, y)`` on the same geometry).
        n_iterations: Adam steps of :meth:`fit` (full batch).
        learning_rate, betas, adam_eps: Adam's step size, moment decays and ``eps``.
        barycenter_iterations: IBP iterations per barycenter, a fixed count (the gradient
            is unrolled through them, as in the paper).
        lse_mode, debiased: barycenter options (see :func:`otcore.barycenter`). Kernel
            mode (the default here, as in the paper) is much faster; it underflows for
            very small ε, which stops training with a clear error: then use
            ``lse_mode=True``.
        seed: seed of the initial parameters (``N(0, 1)`` logits).
        progress: show a progress bar (``tqdm``, if installed).

    Attributes (after :meth:`fit`):
        atoms_: ``(n_atoms, n)`` atoms (rows on the simplex).
        weights_: ``(M, n_atoms)`` weights of the training samples (rows on the simplex).
        loss_history_: list of the loss at each Adam step (floats).
        geometry_: the geometry used.

    Example:
        >>> import numpy as np, otcore as ot
        >>> t = np.linspace(0, 1, 20)
        >>> bumps = np.exp(-(t[None, :] - np.array([[0.3], [0.5], [0.7]])) ** 2 / 0.01)
        >>> Y = bumps / bumps.sum(1, keepdims=True)
        >>> C = (t[:, None] - t[None, :]) ** 2
        >>> model = ot.WassersteinDictionary(2, epsilon=0.01, n_iterations=5, progress=False)
        >>> model.fit(Y, C).atoms_.shape, model.weights_.shape, len(model.loss_history_)
        ((2, 20), (3, 2), 5)
    """

    def __init__(
        self,
        n_atoms: int,
        epsilon=None,
        loss: str = "quadratic",
        *,
        n_iterations: int = 200,
        learning_rate: float = 0.05,
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        barycenter_iterations: int = 50,
        lse_mode: bool = False,
        debiased: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        self.n_atoms = _checks.check_positive_int("n_atoms", n_atoms)
        self.epsilon = epsilon
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        self.loss = loss
        self.n_iterations = _checks.check_positive_int("n_iterations", n_iterations, 0)
        self.learning_rate = _positive("learning_rate", learning_rate)
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = _positive("adam_eps", adam_eps)
        self.barycenter_iterations = _checks.check_positive_int(
            "barycenter_iterations", barycenter_iterations
        )
        self.lse_mode = bool(lse_mode)
        self.debiased = bool(debiased)
        self.seed = int(seed)
        self.progress = bool(progress)

    # -- public --------------------------------------------------------------------
    def fit(self, Y, C_or_geometry):
        """Learn atoms and weights from ``Y (M, n)`` (rows: histograms of equal mass on
        the ``n`` points of ``C_or_geometry``, a cost ``(n, n)`` or a geometry)."""
        geom, Y = self._prepare(Y, C_or_geometry)
        xp = geom.xp
        rng = np.random.default_rng(self.seed)
        M, n = Y.shape
        alpha = _like(rng.standard_normal((self.n_atoms, n)), Y)
        lam = _like(rng.standard_normal((M, self.n_atoms)), Y)
        params, history = self._optimise(geom, Y, [alpha, lam], trainable=(0, 1))
        self.geometry_ = geom
        self.atoms_ = _softmax(xp, params[0])
        self.weights_ = _softmax(xp, params[1])
        self.loss_history_ = history
        return self

    def transform(self, Y, n_iterations: int | None = None):
        """Weights ``(M', n_atoms)`` of new samples ``Y (M', n)`` with the atoms fixed."""
        if not hasattr(self, "atoms_"):
            raise RuntimeError("call fit before transform")
        _, Y = self._prepare(Y, self.geometry_)
        xp = self.geometry_.xp
        rng = np.random.default_rng(self.seed + 1)
        lam = _like(rng.standard_normal((Y.shape[0], self.n_atoms)), Y)
        log_atoms = _xp.safe_log(xp, self.atoms_)
        steps = self.n_iterations if n_iterations is None else n_iterations
        params, _ = self._optimise(self.geometry_, Y, [log_atoms, lam], (1,), steps)
        return _softmax(xp, params[1])

    def reconstruct(self, weights=None):
        """Barycenters ``(M, n)`` of the atoms with ``weights`` (default: the fitted ones)."""
        if not hasattr(self, "atoms_"):
            raise RuntimeError("call fit before reconstruct")
        w = self.weights_ if weights is None else weights
        return barycenter(self._atoms_columns(self.atoms_), self.geometry_, w, **self._bary_kwargs)

    # -- internals ------------------------------------------------------------------
    @property
    def _bary_kwargs(self):
        t = self.barycenter_iterations
        inner = max(d for d in range(1, 11) if t % d == 0)  # no error checks needed
        return {
            "lse_mode": self.lse_mode,
            "debiased": self.debiased,
            "threshold": 0.0,
            "inner_iterations": inner,
            "min_iterations": t,
            "max_iterations": t,
        }

    def _atoms_columns(self, atoms):
        return _xp.namespace(atoms).permute_dims(atoms, (1, 0))

    def _prepare(self, Y, C_or_geometry):
        if isinstance(C_or_geometry, Geometry):
            if self.epsilon is not None and C_or_geometry is not getattr(self, "geometry_", None):
                raise ValueError(
                    "epsilon is given by the geometry: construct WassersteinDictionary without "
                    "epsilon, or pass a cost matrix"
                )
            geom = C_or_geometry
        else:
            geom = Geometry(C_or_geometry, epsilon=self.epsilon)
        geom = geom.bind_to(Y)
        ad = adapter_for(geom.data_arrays()[0], Y, names=["geometry arrays", "Y"])
        _checks.check_float_array(ad.xp, "Y", Y, min_ndim=2)
        n, m = geom.shape
        if Y.ndim != 2 or Y.shape[1] != n:
            raise ValueError(f"Y must have shape (M, n) = (M, {n}), got {tuple(Y.shape)}")
        if n != m:
            raise ValueError(
                f"the cost must be square (atoms and data share a support), got {geom.shape}"
            )
        _checks.check_same_dtype(["geometry arrays", "Y"], [geom.data_arrays()[0], Y])
        _checks.check_weights(ad, "Y", Y)
        mass = ad.xp.sum(Y, axis=1)
        if _checks.fails(ad, ad.xp.abs(mass - 1.0) <= 1e-6):
            raise ValueError("every row of Y must be a histogram of mass 1 (normalise the rows)")
        if self.loss == "kl" and _checks.fails(ad, Y >= 0):
            raise ValueError("Y must be non-negative")
        return geom, Y

    def _optimise(self, geom, Y, params, trainable, steps=None):
        """Adam on ``params = [α (k, n), λ (M, k)]`` for the entries in ``trainable``."""
        steps = self.n_iterations if steps is None else steps
        objective = self._objective(geom, Y)
        b1, b2 = self.betas
        opt = Adam(learning_rate=self.learning_rate, b1=b1, b2=b2, eps=self.adam_eps)

        def step(params, state):
            value, grads = objective(*params)
            new, state = opt.update(
                [grads[i] for i in trainable], state, [params[i] for i in trainable]
            )
            params = list(params)
            for i, p in zip(trainable, new):
                params[i] = p
            return value, params, state

        step = geom.adapter.jit(step)
        state = opt.init([params[i] for i in trainable])
        history = []
        bar = progress(steps, "dictionary", self.progress)
        try:
            for t in range(1, steps + 1):
                message = (
                    f"the loss became non-finite at step {t}: lower learning_rate or raise "
                    "epsilon (kernel mode underflows for small ε: use lse_mode=True)"
                )
                try:
                    value, params, state = step(params, state)
                except NonFiniteIterationError as err:  # the barycenters' own report
                    raise NonFiniteIterationError(message) from err
                history.append(float(value))
                bar.update(1)
                if not np.isfinite(history[-1]):
                    raise NonFiniteIterationError(message)
        finally:
            bar.close()
        return params, history

    def _objective(self, geom, Y):
        """``(alpha, lam) -> (loss, (ᾱ, λ̄))``: the mean loss and its gradients."""
        xp = geom.xp
        kw = self._bary_kwargs
        M = Y.shape[0]

        def bary_vjp(A, W):
            b, pull = _vjp(barycenter, A, geom, W, **kw)
            return b, lambda ct: (lambda r: (r[0], r[2]))(pull(ct))

        def loss_and_grad(b):
            if self.loss == "quadratic":
                r = b - Y
                return xp.sum(r * r) / M, 2.0 * r / M
            if self.loss == "kl":
                pos = Y > 0
                y_safe = xp.where(pos, Y, xp.ones_like(Y))
                terms = xp.where(pos, Y * xp.log(y_safe / b), xp.zeros_like(Y)) - Y + b
                return xp.sum(terms) / M, (1.0 - Y / b) / M
            div_kw = {"threshold": 1e-4, "max_iterations": 2000}
            # the barycenters' mass is 1 only up to the IBP's marginal error; the
            # balanced divergence needs equal masses: compare b / Σb with y
            mass = xp.sum(b, axis=-1, keepdims=True)
            b_n = b / mass
            values, pull = _vjp(sinkhorn_divergence_costs, geom, geom, geom, b_n, Y, **div_kw)
            value = xp.sum(values) / M
            bn_bar = pull(xp.ones_like(values) / M)[3]
            return value, (bn_bar - xp.sum(bn_bar * b_n, axis=-1, keepdims=True)) / mass

        def objective(alpha, lam):
            atoms = _softmax(xp, alpha)
            W = _softmax(xp, lam)
            b, pull = bary_vjp(xp.permute_dims(atoms, (1, 0)), W)
            value, b_bar = loss_and_grad(b)
            A_bar, W_bar = pull(b_bar)
            return value, (
                _softmax_vjp(xp, atoms, xp.permute_dims(A_bar, (1, 0))),
                _softmax_vjp(xp, W, W_bar),
            )

        return objective

    def __repr__(self):
        return f"WassersteinDictionary(n_atoms={self.n_atoms}, loss={self.loss!r})"


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _like(arr: np.ndarray, ref):
    xp = _xp.namespace(ref)
    return xp.asarray(arr, dtype=ref.dtype, device=_xp.device_of(ref))


def _softmax(xp, z):
    """Softmax over the last axis."""
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def _softmax_vjp(xp, s, s_bar):
    """Pull ``s_bar`` back through ``s = softmax(z)`` (last axis): ``s ⊙ (s̄ − ⟨s, s̄⟩)``."""
    return s * (s_bar - xp.sum(s * s_bar, axis=-1, keepdims=True))
