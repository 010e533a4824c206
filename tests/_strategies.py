"""Random OT problems and the reliability contract's classifier (issue 11).

Shared by the property suite (``tests/test_properties.py``, through hypothesis) and the
benchmark ``benchmarks/reliability.py`` (through a seeded NumPy generator): this module
imports neither pytest nor hypothesis, so the benchmark runs without them (it loads this
file by path).

A problem is described by a small dict of *parameters* (:data:`SPACE`): every entry is
drawn from a short list of options or an interval, and :func:`build_case` turns the
parameters into arrays deterministically (array contents come from the ``seed``
parameter). Shapes come from a fixed small set (``n, m`` in {3, 7}, ``d`` in {1, 2}) so
that JAX, which compiles each new shape, reuses its programs.

:func:`run_case` runs one problem on one backend (``"numpy"``, ``"jax"``, ``"torch"``)
and sorts the result into one outcome of :data:`GOOD` or :data:`BAD`:

* ``converged``: finite value (and gradient) reported converged, equal to the float64
  reference within :func:`value_tolerance`;
* ``flagged``: ``converged=False`` or ``diverged=True`` on the output, and the scalar
  helper warned :class:`~otcore.ConvergenceWarning` or raised
  :class:`~otcore.NonFiniteIterationError`;
* ``error``: a ``ValueError``/``TypeError`` whose message names an argument;
* ``nonfinite``: a NaN/inf value or gradient reported converged (silent);
* ``wrong``: a finite value or gradient reported converged but far from the reference,
  or an output dtype other than the input's (silent);
* ``misflagged``: the flags and the report disagree: a non-finite value with
  ``diverged=False`` (only a warning), or the scalar helper's warning/raise does not
  match the output's flags;
* ``unclear``: any other exception, or a ``ValueError``/``TypeError`` naming no argument;
* ``mutated``: an input array was modified.

The reference is :func:`reference`: a float64 NumPy log-mode solve of the same inputs
(already rounded to the tested dtype) with a tight threshold; values and gradients are
compared only where that reference converged.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

import otcore as ot

GOOD = ("converged", "flagged", "error")
BAD = ("nonfinite", "wrong", "misflagged", "unclear", "mutated")
OUTCOMES = GOOD + BAD

# -- the parameter space ---------------------------------------------------------------
#
# A list is a set of options; a tuple ("float", lo, hi) is an interval (uniform). Options
# are listed so that the first one is the "simplest" (hypothesis shrinks towards it).
SPACE = {
    "seed": ("int", 0, 2**31 - 1),
    "n": [3, 7],
    "m": [3, 7],
    "d": [2, 1],
    "scale": [1.0, 1e-3, 1e3, 1e-6, 1e6],  # spread of the clouds
    "offset": [0.0, 0.0, 1e2, 1e5],  # distance from the origin, in units of the spread
    "duplicates": ["none", "within", "across"],  # repeated points in x, or x rows in y
    "zero_point": [False, False, True],  # one point at the origin (cosine's singularity)
    "weights": ["uniform", "random", "zeros", "unnormalised"],
    "mass": [1.0, 1e-3, 1e3],  # total mass with "unnormalised" weights
    "eps_mode": ["relative", "absolute"],
    "log_eps": ("float", -4.0, 3.0),  # ε = 10**log_eps · std(C) or 10**log_eps
    "tau_a": [1.0, 0.5, 0.9, 0.01, 0.99, 1 - 1e-4, 1 - 1e-7, 1 - 1e-9, 1 - 1e-12, 5e-324],
    "tau_b": [1.0, 1.0, 0.5, 0.99, 1 - 1e-7, 1 - 1e-12],
    "lse_mode": [True, False],
    "batch_size": [None, None, 2],  # 2: online mode
    "cost": ["sqeuclidean", "euclidean", "cosine", "pnorm"],
    "schedule": [None, None, None, (10.0, 0.8)],  # epsilon_schedule (log mode only)
    # an invalid input (about one problem in seven): a clear error, or a flag under jit
    "invalid": [None] * 36 + ["nan_x", "nan_a", "negative_a", "inf_b", "empty_y", "zero_a"],
}

#: the tested solve's ``threshold`` and the float64 reference's, per dtype
THRESHOLD = {"float32": 1e-5, "float64": 1e-8}
REF_THRESHOLD = 1e-11
MAX_ITERATIONS = 1000
REF_MAX_ITERATIONS = 5000
#: relative tolerance on values (the issue asks 1e-5 for float32)
RTOL = {"float32": 1e-5, "float64": 1e-9}
UNIT = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}

#: argument names a clear error message may name
ARGUMENTS = (
    "x",
    "y",
    "a",
    "b",
    "epsilon",
    "relative_epsilon",
    "scale_cost",
    "tau_a",
    "tau_b",
    "threshold",
    "max_iterations",
    "inner_iterations",
    "min_iterations",
    "batch_size",
    "cost",
    "lse_mode",
    "epsilon_schedule",
    "momentum",
    "norm_error",
    "initializer",
    "implicit_diff",
    "use_danskin",
)
_CLEAR = re.compile(
    r"(?<![\w.])(" + "|".join(ARGUMENTS) + r")(\s+(must|contains|has|have|and|is|are|should)"
    r"\b|=|\.shape|\.sum|\.dtype|'|\)| \()"
)


def clear_message(message: str) -> bool:
    """Does an error message name an argument (``"a must ..."``, ``"x.shape"``, ...)?"""
    return bool(_CLEAR.search(message))


def random_params(rng: np.random.Generator) -> dict:
    """Parameters drawn from :data:`SPACE` with a NumPy generator (the benchmark's way)."""
    params = {}
    for name, spec in SPACE.items():
        if isinstance(spec, tuple) and spec[0] == "int":
            params[name] = int(rng.integers(spec[1], spec[2]))
        elif isinstance(spec, tuple):
            params[name] = float(rng.uniform(spec[1], spec[2]))
        else:
            params[name] = spec[int(rng.integers(len(spec)))]
    return params


# -- building a problem ----------------------------------------------------------------


@dataclass
class Case:
    """One problem, as NumPy arrays of the tested dtype, and the solver options."""

    params: dict
    dtype: str
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    epsilon: float
    cost_span: float  # max(C) - min(C) in float64 (on the rounded inputs)
    kwargs: dict = field(default_factory=dict)
    invalid: str | None = None

    @property
    def key(self):
        """Hashable identity of the problem (for caching the reference)."""
        return (
            self.dtype,
            self.x.tobytes(),
            self.y.tobytes(),
            self.a.tobytes(),
            self.b.tobytes(),
            self.epsilon,
            repr(sorted((k, repr(v)) for k, v in self.kwargs.items())),
        )

    def describe(self) -> str:
        """The parameters in one line (for reports), in :data:`SPACE`'s order."""
        p = dict(self.params)
        if not p["lse_mode"]:
            p["schedule"] = None  # not used in kernel mode
        return f"{self.dtype} eps={self.epsilon:.3g} " + " ".join(
            f"{k}={p[k]!r}" for k in SPACE if k in p
        )


def make_cost(name: str):
    return ot.costs.PNorm(1.5) if name == "pnorm" else name


def _cost_matrix(name, x, y):
    """float64 cost matrix, written here (not otcore's) for ε and the tolerances."""
    diff = x[:, None, :] - y[None, :, :]
    if name == "sqeuclidean":
        return np.sum(diff**2, -1)
    if name == "euclidean":
        return np.sqrt(np.sum(diff**2, -1))
    if name == "pnorm":
        return np.sum(np.abs(diff) ** 1.5, -1)
    nx = np.linalg.norm(x, axis=-1)[:, None]
    ny = np.linalg.norm(y, axis=-1)[None, :]
    return 1.0 - (x @ y.T) / np.maximum(nx * ny, 1e-300)


def build_case(params: dict, dtype: str) -> Case:
    """Arrays and options of the problem ``params`` in ``dtype`` ("float32"/"float64")."""
    p = params
    rng = np.random.default_rng(p["seed"])
    n, m, d = p["n"], p["m"], p["d"]
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + 0.5
    if p["duplicates"] == "within":
        x[1:3] = x[0]
    elif p["duplicates"] == "across":
        y[: min(n, m) - 1] = x[: min(n, m) - 1]
    if p["zero_point"]:
        x[-1] = 0.0
    shift = p["offset"] * p["scale"]
    x = (x * p["scale"] + shift).astype(dtype)
    y = (y * p["scale"] + shift).astype(dtype)

    def weights(k):
        if p["weights"] == "uniform":
            w = np.full(k, 1.0 / k)
        else:
            w = rng.uniform(0.1, 1.0, size=k)
            if p["weights"] == "zeros":
                w[rng.choice(k, size=k // 2, replace=False)] = 0.0
            w = w / w.sum()
        if p["weights"] == "unnormalised":
            w = w * p["mass"]
        return w.astype(dtype)

    a, b = weights(n), weights(m)
    if p["tau_a"] == 1.0 and p["tau_b"] == 1.0 and a.sum(dtype=np.float64) > 0:
        # balanced: equal masses (up to the dtype's rounding)
        b = (b.astype(np.float64) * (a.sum(dtype=np.float64) / b.sum(dtype=np.float64))).astype(
            dtype
        )
    C = _cost_matrix(p["cost"], x.astype(np.float64), y.astype(np.float64))
    span = float(C.max() - C.min()) if C.size else 0.0
    if p["eps_mode"] == "relative":
        std = float(C.std()) if C.size else 1.0
        epsilon = 10.0 ** p["log_eps"] * (std if std > 0 else 1.0)
    else:
        epsilon = 10.0 ** p["log_eps"]
    kwargs = dict(
        cost=p["cost"],
        tau_a=p["tau_a"],
        tau_b=p["tau_b"],
        lse_mode=p["lse_mode"],
        batch_size=p["batch_size"],
        threshold=THRESHOLD[dtype],
        max_iterations=MAX_ITERATIONS,
    )
    if p["schedule"] is not None and p["lse_mode"]:
        kwargs["epsilon_schedule"] = p["schedule"]
    invalid = p["invalid"]
    if invalid == "nan_x":
        x[0, 0] = np.nan
    elif invalid == "nan_a":
        a[0] = np.nan
    elif invalid == "negative_a":
        a[0] = -a[0] - 0.1
    elif invalid == "inf_b":
        b[-1] = np.inf
    elif invalid == "empty_y":
        y, b = y[:0], b[:0]
    elif invalid == "zero_a":
        a[:] = 0
    return Case(p, dtype, x, y, a, b, float(epsilon), span, kwargs, invalid)


# -- backends ----------------------------------------------------------------------------

BACKENDS = ("numpy", "jax", "torch")


def _to_backend(backend, arr):
    arr = np.array(arr, copy=True)
    if backend == "numpy":
        return arr
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(arr)
    if backend == "torch":
        import torch

        return torch.from_numpy(arr)
    raise ValueError(backend)


def to_numpy(x):
    """A backend's array (or a Python scalar) as a NumPy array."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _value_and_grad(backend, x, y, a, b, kwargs):
    """``reg_ot_cost`` and its gradient w.r.t. ``x`` with the backend's own autodiff
    (``ot.value_and_grad`` on NumPy)."""
    if backend == "numpy":
        return ot.value_and_grad(ot.reg_ot_cost)(x, y, a, b, **kwargs)
    if backend == "jax":
        import jax

        return jax.value_and_grad(lambda x_: ot.reg_ot_cost(x_, y, a, b, **kwargs))(x)
    import torch

    xg = x.detach().clone().requires_grad_(True)
    value = ot.reg_ot_cost(xg, y, a, b, **kwargs)
    (gx,) = torch.autograd.grad(value, xg)
    return value.detach(), gx


def _solve(backend, x, y, a, b, kwargs, jit):
    """``(reg_ot_cost, all converged, diverged)`` from :class:`otcore.Sinkhorn`."""
    kw = dict(kwargs)
    geom_kw = {"cost": make_cost(kw.pop("cost")), "batch_size": kw.pop("batch_size")}
    tau_a, tau_b, epsilon = kw.pop("tau_a"), kw.pop("tau_b"), kw.pop("epsilon")

    def run(x, y, a, b):
        geom = ot.PointCloud(x, y, epsilon=epsilon, **geom_kw)
        out = ot.Sinkhorn(**kw)(ot.LinearProblem(geom, a, b, tau_a=tau_a, tau_b=tau_b))
        return out.reg_ot_cost, out.xp.all(out.converged), out.diverged

    if jit:
        import jax

        run = jax.jit(run)
    value, conv, div = run(x, y, a, b)
    return value, bool(conv), bool(div)


# -- the reference -----------------------------------------------------------------------

_REF_CACHE: dict = {}


@dataclass
class Reference:
    converged: bool
    value: float = math.nan
    grad: np.ndarray | None = None


def reference(case: Case) -> Reference:
    """float64 NumPy log-mode solve of the case's (rounded) inputs, tight threshold."""
    if case.key in _REF_CACHE:
        return _REF_CACHE[case.key]
    ref = Reference(False)
    if case.invalid is None:
        kw = {
            k: v
            for k, v in case.kwargs.items()
            if k not in ("lse_mode", "batch_size", "epsilon_schedule")
        }
        mass = max(1.0, float(case.a.sum(dtype=np.float64)), float(case.b.sum(dtype=np.float64)))
        kw.update(
            cost=make_cost(kw["cost"]),
            threshold=REF_THRESHOLD * mass,
            max_iterations=REF_MAX_ITERATIONS,
        )
        args = [v.astype(np.float64) for v in (case.x, case.y, case.a, case.b)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", ot.ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                value, grad = ot.value_and_grad(ot.reg_ot_cost)(*args, epsilon=case.epsilon, **kw)
            except (ot.ConvergenceWarning, ot.NonFiniteIterationError, ValueError, TypeError):
                pass
            else:
                if np.isfinite(value) and np.all(np.isfinite(grad)):
                    ref = Reference(True, float(value), np.asarray(grad))
    if len(_REF_CACHE) > 4096:
        _REF_CACHE.clear()
    _REF_CACHE[case.key] = ref
    return ref


def cost_resolution(case: Case) -> float:
    """Bound on ``max_ij |ΔC_ij|`` that rounding the points' *directions* costs the cosine
    cost in the tested dtype (0 for the other costs, whose differences ``x_i - y_j`` or
    centred expansions are covered by the ``64·eps·span(C)`` term of
    :func:`value_tolerance`).

    ``1 - cos θ`` depends on the component of ``y_j`` perpendicular to ``x_i``: any
    evaluation that rounds the unit vectors ``u = x/|x|``, ``v = y/|y|`` (or, equally,
    the norms and the inner product) to working precision moves each by up to ``eps/2``
    across the other, and ``c = |u - v|²/2`` then moves by up to
    ``|u - v| · eps = sin θ · eps ≈ sqrt(c (2 - c)) · eps``: the cost's condition number
    with respect to relative perturbations of its inputs (``|∇_x c| · |x| = sin θ``). It is
    far above ``eps · c`` for nearly parallel vectors (clouds far from the origin: at
    ``offset=1e5``, ``c ≈ 1e-10`` and ``sin θ ≈ 1e-5``). Bound used: ``4 · eps · max_ij
    sqrt(C_ij (2 - C_ij))`` (twice the estimate; otcore measures about a quarter of it).
    """
    if case.params["cost"] != "cosine" or case.x.size == 0 or case.y.size == 0:
        return 0.0
    C = _cost_matrix("cosine", case.x.astype(np.float64), case.y.astype(np.float64))
    C = np.clip(C, 0.0, 2.0)
    return 4 * UNIT[case.dtype] * float(np.max(np.sqrt(C * (2.0 - C))))


def value_tolerance(case: Case, ref: Reference) -> float:
    """Allowed ``|value - ref|``: the issue's relative tolerance, the dtype's resolution
    of the problem's numbers (costs and ε-scaled log-weights: a float32 solve cannot
    resolve a 1e-12 cost at ε = 1e3; the cosine cost's rounding, :func:`cost_resolution`,
    times the transported mass, since the value is Lipschitz in ``C`` with the plan's mass
    as constant: ``∂ value / ∂C = P``) and the marginal error the threshold allows."""
    dt = case.dtype
    a64, b64 = case.a.astype(np.float64), case.b.astype(np.float64)
    mass = max(a64.sum(), b64.sum())
    pos = np.concatenate([a64[a64 > 0], b64[b64 > 0]])
    log_w = float(np.max(np.abs(np.log(pos)))) if pos.size else 0.0
    magnitude = case.cost_span + case.epsilon * (1.0 + log_w)
    thr = THRESHOLD[dt] * max(1.0, mass)
    resolution = cost_resolution(case) * mass
    return (
        RTOL[dt] * abs(ref.value)
        + 64 * UNIT[dt] * magnitude * mass
        + resolution
        + 4 * thr * magnitude
    )


def cost_slope(name, x, y) -> float:
    """``max_ij |∇_x c(x_i, y_j)|`` in float64 (closed forms; cosine: ``1/|x_i|``)."""
    diff = x[:, None, :] - y[None, :, :]
    if diff.size == 0:
        return 0.0
    if name == "sqeuclidean":
        return float(2 * np.max(np.linalg.norm(diff, axis=-1)))
    if name == "euclidean":
        return 1.0
    if name == "pnorm":
        return float(1.5 * np.max(np.linalg.norm(np.abs(diff) ** 0.5, axis=-1)))
    norms = np.linalg.norm(x, axis=-1)
    norms = norms[norms > 0]
    return float(1.0 / np.min(norms)) if norms.size else 0.0


def grad_tolerance(case: Case, ref: Reference) -> float:
    """Allowed ``max |grad - ref_grad|``: relative to the gradient's scale
    ``mass · max|∇c|``, loosened by the plan's sensitivity ``span(C)/ε`` to the dtype's
    rounding, plus the marginal error that the threshold allows."""
    dt = case.dtype
    a64 = case.a.astype(np.float64)
    mass = max(float(a64.sum()), float(case.b.astype(np.float64).sum()))
    slope = cost_slope(case.params["cost"], case.x.astype(np.float64), case.y.astype(np.float64))
    scale = mass * slope + float(np.max(np.abs(ref.grad)))
    sensitivity = max(1.0, case.cost_span / case.epsilon)
    thr = THRESHOLD[dt] * max(1.0, mass)
    rel = 1e3 * UNIT[dt] * sensitivity + 4 * thr / max(mass, 1e-300) + RTOL[dt]
    return min(rel, 1.0) * scale


# -- running and classifying -------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    detail: str = ""


def _is_finite(v) -> bool:
    return bool(np.all(np.isfinite(to_numpy(v))))


def run_case(case: Case, backend: str, jit: bool = False) -> Outcome:
    """Run ``case`` on ``backend`` and classify the result (see the module docstring).

    Eager: ``reg_ot_cost`` and its gradient w.r.t. ``x`` with the backend's autodiff
    (``ot.value_and_grad`` on NumPy), then :class:`otcore.Sinkhorn` for the flags.
    ``jit=True`` (JAX only): the :class:`~otcore.Sinkhorn` solve inside ``jax.jit``
    (no value checks can run there: the flags alone must tell).
    """
    inputs = [_to_backend(backend, v) for v in (case.x, case.y, case.a, case.b)]
    copies = [np.array(v, copy=True) for v in (case.x, case.y, case.a, case.b)]
    kwargs = dict(case.kwargs, epsilon=case.epsilon)

    def mutated():
        for name, arr, orig in zip("xyab", inputs, copies):
            if not np.array_equal(to_numpy(arr), orig, equal_nan=True):
                return Outcome("mutated", f"{name} was modified")
        return None

    def exception_outcome(exc):
        if isinstance(exc, ot.NonFiniteIterationError):
            return Outcome("flagged", "NonFiniteIterationError")
        if isinstance(exc, (ValueError, TypeError)) and clear_message(str(exc)):
            return Outcome("error", f"{type(exc).__name__}: {exc}"[:200])
        return Outcome("unclear", f"{type(exc).__name__}: {exc}"[:300])

    if jit:
        try:
            value, conv, div = _solve(backend, *inputs, kwargs, True)
        except Exception as exc:  # classified below
            return mutated() or exception_outcome(exc)
        return mutated() or _classify_flags(case, value, conv, div)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, gx = _value_and_grad(backend, *inputs, make_kwargs(kwargs))
        except Exception as exc:  # classified below
            raised = exc
        else:
            raised = None
    warned = any(issubclass(w.category, ot.ConvergenceWarning) for w in caught)
    bad = mutated()
    if bad:
        return bad
    if raised is not None and not isinstance(raised, ot.NonFiniteIterationError):
        return exception_outcome(raised)
    # the same problem through Sinkhorn, for the flags
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            svalue, conv, div = _solve(backend, *inputs, kwargs, False)
        except Exception as exc:  # classified below
            return Outcome("unclear", f"Sinkhorn raised where reg_ot_cost did not: {exc!r}"[:300])
    if raised is not None:  # NonFiniteIterationError
        if not div:
            return Outcome("misflagged", "NonFiniteIterationError raised but diverged=False")
        return Outcome("flagged", "diverged")
    if div:
        return Outcome("misflagged", "diverged=True but reg_ot_cost did not raise")
    if warned == conv:
        return Outcome(
            "misflagged", f"converged={conv} but ConvergenceWarning {'' if warned else 'not '}given"
        )
    flags = _classify_flags(case, svalue, conv, div)
    if flags.kind != "converged":
        if flags.kind == "flagged" and not _is_finite(value):
            return Outcome("misflagged", f"reg_ot_cost={to_numpy(value)} with only a warning")
        return flags
    # converged: the scalar helper's value and gradient must be right too
    return _check_value(case, value, gx, "reg_ot_cost")


def make_kwargs(kwargs):
    return dict(kwargs, cost=make_cost(kwargs["cost"]))


def _classify_flags(case, value, conv, div):
    finite = _is_finite(value)
    if conv and div:
        return Outcome("misflagged", "converged and diverged both True")
    if not finite and not div:
        return Outcome(
            "misflagged" if not conv else "nonfinite",
            f"value={to_numpy(value)}, converged={conv}, diverged=False",
        )
    if not conv:
        return Outcome("flagged", "diverged" if div else "not converged")
    return _check_value(case, value, None, "Sinkhorn")


def _check_value(case, value, gx, where):
    """A converged result: finite, the input's dtype, equal to the reference."""
    v = to_numpy(value)
    if str(v.dtype) != case.dtype:
        return Outcome("wrong", f"{where} returned {v.dtype} for {case.dtype} inputs")
    if not np.all(np.isfinite(v)):
        return Outcome("nonfinite", f"{where} value {v} reported converged")
    if case.invalid is not None:
        return Outcome("wrong", f"{where} converged on invalid input ({case.invalid}): {v}")
    if gx is not None:
        g = to_numpy(gx)
        if not np.all(np.isfinite(g)):
            return Outcome("nonfinite", f"{where} gradient w.r.t. x not finite: {g.tolist()}")
        if str(g.dtype) != case.dtype:
            return Outcome("wrong", f"{where} gradient is {g.dtype} for {case.dtype} inputs")
    ref = reference(case)
    if not ref.converged:
        return Outcome("converged", "no reference")
    err = abs(float(v) - ref.value)
    tol = value_tolerance(case, ref)
    if not err <= tol:
        return Outcome(
            "wrong",
            f"{where} value {float(v)!r} vs float64 reference {ref.value!r} "
            f"(|diff| {err:.3g} > tol {tol:.3g})",
        )
    if gx is not None:
        gerr = float(np.max(np.abs(g.astype(np.float64) - ref.grad)))
        gtol = grad_tolerance(case, ref)
        if not gerr <= gtol:
            return Outcome(
                "wrong",
                f"{where} gradient off by {gerr:.3g} > tol {gtol:.3g} "
                f"(max |ref grad| {np.max(np.abs(ref.grad)):.3g})",
            )
    return Outcome("converged")
