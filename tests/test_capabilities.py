"""The capability tables (``otcore/autodiff/capabilities.py``) and the rules bound by signature.

* every unsupported cell raises the table's ``UnsupportedDerivativeError`` from
  ``ot.vjp``/``ot.grad`` (order 1) and ``ot.hvp``/``ot.hessian`` (order 2), naming the entry
  point, backend, mode and order;
* every supported manual cell runs and gives finite cotangents of the arguments' shapes
  (fixed cotangents, not derived from the inputs); samples of the autodiff cells too;
* a second derivative of an envelope cost through ``ot.hessian`` on PyTorch equals the
  manual (implicit) Hessian, while differentiating the envelope gradient itself does not;
* the manual rules read every option from the call bound to the entry point's signature:
  unknown keywords are refused by name, and a default changed in the entry point is the
  default the rule uses;
* the capability section of ``docs/backends.md`` is the generated text.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import numpy as np
import pytest
from _capabilities import example_call, expect
from _helpers import make_backend

import otcore as ot
from otcore.autodiff import capabilities as cap
from otcore.autodiff.registry import Call, manual_rules
from otcore.errors import UnsupportedDerivativeError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cells(supported: bool, backend=None):
    return [
        pytest.param(fun, b, mode, order, geo, id=f"{fun.__name__}-{b}-{mode}-{order}-{geo}")
        for fun, b, mode, order, geo, cell in cap.cells()
        if cell.supported == supported and (backend is None or b == backend)
    ]


def test_every_table_has_every_cell():
    rules = manual_rules()
    # every manual rule answers to a table, and the table's manual "yes" cells have a rule
    assert set(rules.vjp) | set(rules.hvp) <= set(cap.TABLES)
    for fun, backend, _, order, _, cell in cap.cells():
        if backend == "manual" and cell.supported:
            assert fun in (rules.vjp if order == 1 else rules.hvp), (fun.__name__, order)
    for tab in cap.TABLES.values():
        for backend in cap.BACKENDS:
            for geometry in (cap.ANY, *tab.geometries):
                for mode in tab.modes:
                    for order in cap.ORDERS:
                        cell = tab.lookup(backend, mode, order, geometry)
                        assert cell.supported or (cell.reason and cell.instead), (tab.name, mode)


@pytest.mark.parametrize(("fun", "backend", "mode", "order", "geometry"), _cells(False))
def test_every_unsupported_cell_raises_the_tables_error(fun, backend, mode, order, geometry):
    be = make_backend("numpy" if backend == "manual" else backend)
    args, kw = example_call(fun, mode, geometry, to_xp=be.to_xp)
    tab = cap.table(fun)
    bound = Call(fun, args, kw).arguments
    assert tab.mode(bound) == mode
    assert geometry == cap.ANY or tab.geometry(bound) == geometry
    where = r"numpy arrays \(manual rules\)" if backend == "manual" else f"{backend} arrays"
    head = rf"of {fun.__name__} on {where}, {mode} mode, order {order}"
    transforms = ("vjp", "grad") if order == 1 else ("hvp", "hessian")
    for name in transforms:
        fn = getattr(ot, name)
        with pytest.raises(UnsupportedDerivativeError, match=rf"ot\.{name} {head}.*Use instead"):
            if name == "vjp":
                fn(fun, *args, **kw)
            else:
                fn(fun, argnums=0)(*args, **kw)
    # the error is also a NotImplementedError and a TypeError (what the old messages were)
    assert issubclass(UnsupportedDerivativeError, NotImplementedError | TypeError)


def _pull_fixed(value, pull, seed=1, to_xp=np.asarray):
    ct = np.random.default_rng(seed).normal(size=tuple(value.shape))
    return pull(to_xp(ct))


@pytest.mark.parametrize(("fun", "backend", "mode", "order", "geometry"), _cells(True, "manual"))
def test_every_supported_manual_cell_runs(fun, backend, mode, order, geometry):
    args, kw = example_call(fun, mode, geometry)
    if order == 1:
        value, pull = ot.vjp(fun, *args, **kw)
        grads = _pull_fixed(value, pull)
        assert len(grads) == len(args)
        for arg, g in zip(args, grads):
            if isinstance(arg, np.ndarray):
                assert g.shape == arg.shape and np.all(np.isfinite(g))
        assert max(np.abs(g).max() for g in grads if g is not None) > 1e-6
    else:
        v = np.random.default_rng(2).normal(size=args[0].shape)
        hv = ot.hvp(fun, argnums=0)(*args, **kw)(v)
        assert hv.shape == args[0].shape and np.all(np.isfinite(hv))
        assert np.abs(hv).max() > 1e-6


def test_supported_cells_on_torch_agree_with_numpy_rules():
    """A sample of autodiff cells through the same transforms: torch = NumPy's rules."""
    torch = pytest.importorskip("torch")
    for fun, mode in (
        (ot.reg_ot_cost, "unrolled"),
        (ot.sinkhorn_divergence, "implicit"),
        (ot.barycenter, "implicit"),
    ):
        assert expect(fun, "torch", mode, 1).supported and expect(fun, "manual", mode, 1).supported
        args, kw = example_call(fun, mode)
        targs, tkw = example_call(fun, mode, to_xp=torch.asarray)
        ref = _pull_fixed(*ot.vjp(fun, *args, **kw))
        got = _pull_fixed(*ot.vjp(fun, *targs, **tkw), to_xp=torch.asarray)
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g.numpy(), r, rtol=1e-7, atol=1e-9 * np.abs(r).max())


def test_free_barycenter_on_torch_is_supported_where_numpy_is_not():
    torch = pytest.importorskip("torch")
    assert not expect(ot.free_barycenter, "manual", "implicit", 1).supported
    assert expect(ot.free_barycenter, "torch", "implicit", 1).supported
    args, kw = example_call(ot.free_barycenter, "implicit", to_xp=torch.asarray)
    value, pull = ot.vjp(ot.free_barycenter, *args, **kw)
    (g,) = _pull_fixed(value, pull, to_xp=torch.asarray)
    assert g.shape == args[0].shape and bool(torch.isfinite(g).all())
    # every support point moves with its inputs: the cotangent reaches every input cloud
    assert float(g.abs().sum(dim=(1, 2)).min()) > 1e-3


def test_envelope_second_order_on_torch_is_the_implicit_hessian():
    """``ot.hessian`` of a cost in envelope mode (the default) on PyTorch, and PyTorch's own
    Hessian of the envelope gradient, equal the manual analytic Hessian: the envelope
    rule keeps the potentials' response for second order."""
    torch = pytest.importorskip("torch")
    assert expect(ot.reg_ot_cost, "torch", "envelope", 2).supported
    args, kw = example_call(ot.reg_ot_cost, "envelope")
    reference = ot.hessian(ot.reg_ot_cost)(*args, **kw)  # manual analytic rule
    targs, tkw = example_call(ot.reg_ot_cost, "envelope", to_xp=torch.asarray)
    got = ot.hessian(ot.reg_ot_cost)(*targs, **tkw).numpy()
    np.testing.assert_allclose(got, reference, rtol=1e-7, atol=1e-9)
    raw = torch.autograd.functional.hessian(
        lambda x: ot.reg_ot_cost(x, *targs[1:], **tkw), targs[0]
    ).numpy()
    np.testing.assert_allclose(raw, reference, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_unknown_keywords_are_refused_by_name(backend):
    be = make_backend(backend)
    args, _ = example_call(ot.reg_ot_cost, "envelope", to_xp=be.to_xp)
    with pytest.raises(
        TypeError,
        match=r"reg_ot_cost\(\) got an unexpected keyword argument 'thresold'; did you mean 'threshold'",
    ):
        ot.grad(ot.reg_ot_cost)(*args, thresold=1e-3)
    with pytest.raises(TypeError, match=r"'epsilom'; did you mean 'epsilon'"):
        ot.hvp(ot.reg_ot_cost)(*args, epsilom=0.1)
    bargs, _ = example_call(ot.barycenter, "unrolled", to_xp=be.to_xp)
    with pytest.raises(TypeError, match=r"barycenter\(\) got an unexpected keyword argument 'foo'"):
        ot.vjp(ot.barycenter, *bargs, foo=1)
    with pytest.raises(TypeError, match=r"reg_ot_cost_matrix\(\): too many positional"):
        ot.grad(ot.reg_ot_cost_matrix)(args[0], args[2], args[3], args[3])


def test_rules_use_the_entry_points_own_defaults(monkeypatch):
    """The rules copy no default: the value a rule computes equals the entry point's, with
    the defaults as they are, and after a default of the entry point is changed."""
    args, kw = example_call(ot.barycenter, "unrolled")
    kw = {k: v for k, v in kw.items() if k not in ("threshold", "implicit_diff")}
    value, _ = ot.vjp(ot.barycenter, *args, **kw)
    np.testing.assert_array_equal(value, ot.barycenter(*args, **kw))
    own = inspect.unwrap(ot.barycenter)  # under the keyword-suggesting wrapper
    changed = {**own.__kwdefaults__, "threshold": 0.5, "max_iterations": 3}
    monkeypatch.setattr(own, "__kwdefaults__", changed)
    coarse, _ = ot.vjp(ot.barycenter, *args, **kw)
    np.testing.assert_array_equal(coarse, ot.barycenter(*args, **kw))
    assert np.abs(coarse - value).max() > 1e-8  # the changed default really changed it

    x, y, a, b = example_call(ot.reg_ot_cost, "envelope")[0]
    for fun, fargs in (
        (ot.reg_ot_cost, (x, y, a, b)),
        (ot.sinkhorn_divergence, (x, y, a, b)),
        (ot.reg_ot_cost_matrix, (ot.PointCloud(x, y).cost_matrix, a, b)),
    ):
        value, _ = ot.value_and_grad(fun)(*fargs, epsilon=0.3)
        assert value == fun(*fargs, epsilon=0.3), fun.__name__


def test_divergence_hvp_solves_the_three_problems_once(monkeypatch):
    """``ot.hvp(ot.sinkhorn_divergence)`` runs three Sinkhorn solves, not six."""
    from otcore.solvers import sinkhorn

    calls = []
    original = sinkhorn.Sinkhorn.__call__

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(sinkhorn.Sinkhorn, "__call__", counting)
    args, kw = example_call(ot.sinkhorn_divergence, "implicit")
    product = ot.hvp(ot.sinkhorn_divergence)(*args, **kw)
    product(np.ones_like(args[0]))
    assert len(calls) == 3


def test_backends_page_is_generated_from_the_tables():
    page = (ROOT / "docs" / "backends.md").read_text()
    assert cap.BEGIN in page and cap.END in page
    assert cap.render(page) == page, "run: python docs/_ext/capabilities_page.py"
    # every entry point with a table has its section, with its unsupported cells marked
    for tab in cap.TABLES.values():
        assert f"### `{tab.name}`" in page
    section = page[page.index("### `reg_ot_cost_matrix`") :]
    section = section[: section.index("### `solve`")]
    assert re.search(r"\| NumPy / CuPy \(manual rules\) \| 2 \| \*\*no\*\*", section)
