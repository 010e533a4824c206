"""Property-based tests of the reliability contract (issue 11), with ``hypothesis``.

The contract: every call returns

* a finite result whose ``converged`` flag is true (and which is right), or
* a result flagged ``converged=False`` / ``diverged=True`` (``ot.reg_ot_cost`` then warns
  :class:`~otcore.ConvergenceWarning` or raises :class:`~otcore.NonFiniteIterationError`), or
* a clear ``ValueError``/``TypeError`` that names the argument,

never a non-finite or wrong number reported as converged; inputs are never modified.

Problems are drawn from :data:`_strategies.SPACE`: point clouds with duplicates, scales
1e-6 to 1e6 and far from the origin, uniform / random / zero / unnormalised weights, ε from
1e-4·std(C) to 1e3, ``tau`` in ``(0, 1]`` (down to 5e-324 and up to 1 - 1e-12), both
``lse_mode`` values, online mode (``batch_size``), the sqeuclidean, euclidean, cosine and
``PNorm(1.5)`` costs, an ε schedule, and (about one problem in seven) an invalid input.
Each is run on NumPy, JAX and PyTorch (CPU) in float32 and float64: ``reg_ot_cost`` with
its gradient w.r.t. ``x`` through the backend's own autodiff (``ot.value_and_grad`` on
NumPy, ``jax.value_and_grad``, ``torch.autograd.grad``), then :class:`~otcore.Sinkhorn`
for the flags, and on JAX also the :class:`~otcore.Sinkhorn` solve inside ``jax.jit``
(where no value check can run: the flags alone must tell). A converged value is compared
with a float64 NumPy log-mode solve of the same float32-rounded inputs with a tight
threshold (where that reference converges): within ``1e-5`` relative in float32 (the
issue's bound), plus the dtype's resolution of the problem's numbers and the marginal
error that the threshold allows (:func:`_strategies.value_tolerance`); gradients against
the reference's gradient (:func:`_strategies.grad_tolerance`), so the backends agree with
each other. :mod:`_strategies` holds the generator and the classifier; it is shared with
``benchmarks/reliability.py``, which prints the table of outcomes.

Profiles (registered in ``tests/conftest.py``):

* ``ci`` (the default): ``max_examples=100``, scaled per backend and dtype (NumPy 100,
  PyTorch 60, JAX 5 eager + 15 under ``jax.jit``: eager JAX takes seconds per problem),
  plus the issue's cases as explicit examples (:data:`KNOWN`), deterministic
  (``derandomize=True``, no example database, no deadline), no shrinking (a failure is
  reported with its parameters at once). About two to three minutes on two cores.
* ``long``: ``max_examples=2000`` (2000 problems per dtype on NumPy, 1200 on PyTorch,
  100 eager + 300 jitted on JAX), random
  seeds, with shrinking::

      python -m pytest tests/test_properties.py --hypothesis-profile=long

A failing example prints its parameters (``seed=... eps=... tau_a=...``): rebuild it
with ``_strategies.build_case(params, dtype)`` and run ``_strategies.run_case``.
"""

from __future__ import annotations

import importlib.util

import pytest

hypothesis = pytest.importorskip("hypothesis")

import _strategies as S  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = ("float32", "float64")
#: share of the profile's ``max_examples`` run per backend and dtype
SHARE = {"numpy": 1.0, "torch": 0.6, "jax": 0.05}
JIT_SHARE = 0.15


def params_strategy():
    """Hypothesis strategy of problem parameters (see :data:`_strategies.SPACE`)."""
    fields = {}
    for name, spec in S.SPACE.items():
        if isinstance(spec, tuple) and spec[0] == "int":
            fields[name] = st.integers(spec[1], spec[2])
        elif isinstance(spec, tuple):
            fields[name] = st.floats(spec[1], spec[2], allow_nan=False)
        else:
            fields[name] = st.sampled_from(spec)
    return st.fixed_dictionaries(fields)


def _params(**changes):
    base = {
        "seed": 0,
        "n": 7,
        "m": 7,
        "d": 2,
        "scale": 1.0,
        "offset": 0.0,
        "duplicates": "none",
        "zero_point": False,
        "weights": "uniform",
        "mass": 1.0,
        "eps_mode": "relative",
        "log_eps": -1.0,
        "tau_a": 1.0,
        "tau_b": 1.0,
        "lse_mode": True,
        "batch_size": None,
        "cost": "sqeuclidean",
        "schedule": None,
        "invalid": None,
    }
    return {**base, **changes}


#: the issue's cases among the generated problems, checked on every run (item numbers)
KNOWN = [
    _params(log_eps=-2.0),  # a plain problem
    _params(weights="zeros", lse_mode=False),  # zero weights in kernel mode (item 1)
    _params(invalid="empty_y"),  # empty arrays (item 2)
    _params(cost="cosine", zero_point=True, eps_mode="absolute"),  # zero vector (item 3)
    _params(tau_a=5e-324),  # rho underflows (item 5)
    _params(tau_a=1 - 1e-9, eps_mode="absolute"),  # tau near 1 (item 6)
    _params(offset=1e5, scale=1e-2, eps_mode="absolute", log_eps=-4.0),  # far (item 7)
    _params(schedule=(10.0, 0.8)),  # epsilon_schedule keeps the dtype (item 8)
    _params(schedule=(10.0, 0.8), tau_a=0.5, log_eps=-2.0),  # unbalanced + schedule (9)
    _params(weights="unnormalised", mass=1e3, eps_mode="absolute", log_eps=0.0),  # (14)
    _params(batch_size=2, cost="pnorm", tau_b=0.9),  # online mode, PNorm
]


def _n_examples(share: float) -> int:
    return max(1, round(settings.default.max_examples * share))


def _skip_missing(backend):
    if backend != "numpy" and importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")


#: eager JAX takes seconds per problem (it compiles each solve and dispatches the implicit
#: backward op by op): a subset of KNOWN (items 5, 6, 7); ``jax.jit`` runs more problems
KNOWN_JAX = [KNOWN[4], KNOWN[5], KNOWN[6]]


def _with_examples(test, examples):
    for params in reversed(examples):
        test = example(params=params)(test)
    return test


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", S.BACKENDS)
def test_contract_on_random_problems(backend, dtype):
    """Values, gradients and flags of ``reg_ot_cost``/``Sinkhorn`` keep the contract."""
    _skip_missing(backend)

    def check(params):
        case = S.build_case(params, dtype)
        outcome = S.run_case(case, backend)
        assert outcome.kind in S.GOOD, (
            f"{outcome.kind} on {backend}: {outcome.detail}\n  problem: {case.describe()}"
        )

    check = _with_examples(check, KNOWN_JAX if backend == "jax" else KNOWN)
    settings(max_examples=_n_examples(SHARE[backend]))(given(params=params_strategy())(check))()


@pytest.mark.parametrize("dtype", DTYPES)
def test_contract_under_jax_jit(dtype):
    """Inside ``jax.jit`` no value check runs: ``converged``/``diverged`` alone must tell
    (a non-finite or invalid problem is never reported converged)."""
    _skip_missing("jax")

    @settings(max_examples=_n_examples(JIT_SHARE))
    @given(params=params_strategy())
    @example(params=_params(invalid="nan_a"))  # NaN weights: diverged (item 4)
    @example(params=_params(invalid="nan_x"))
    @example(params=_params(invalid="negative_a"))
    @example(params=_params(weights="unnormalised", mass=1e30))  # mass overflow (item 4)
    def check(params):
        case = S.build_case(params, dtype)
        outcome = S.run_case(case, "jax", jit=True)
        assert outcome.kind in S.GOOD, (
            f"{outcome.kind} under jax.jit: {outcome.detail}\n  problem: {case.describe()}"
        )

    check()


def test_classifier_bites():
    """The classifier itself: a wrong value, a silent NaN and a vague error are bad."""
    case = S.build_case(_params(), "float64")
    ref = S.reference(case)
    assert ref.converged
    off = ref.value * (1 + 1e-6)
    assert S._check_value(case, S.np.float64(off), None, "t").kind == "wrong"
    assert S._check_value(case, S.np.float64(ref.value), None, "t").kind == "converged"
    assert S._check_value(case, S.np.float64("nan"), None, "t").kind == "nonfinite"
    assert S._classify_flags(case, S.np.float64("nan"), False, False).kind == "misflagged"
    assert S.clear_message("a must be non-negative, got a negative entry")
    assert S.clear_message("x and y must have the same number of features")
    assert not S.clear_message("zero-size array to reduction operation maximum")
    assert not S.clear_message("Sinkhorn.__init__() got an unexpected keyword argument 'reg'")
