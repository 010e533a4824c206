"""PyTorch adapter: eager loops (one host sync per convergence check), native logsumexp."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch.autograd import forward_ad
from torch.utils import _pytree

from otcore.backends.base import FIXED_POINT_SECOND_ORDER, Adapter
from otcore.errors import UnsupportedDerivativeError


def _is_batched(x) -> bool:
    """True when ``x`` is (or wraps) a ``torch.func.vmap`` BatchedTensor: its values
    differ along a batch axis that Python control flow cannot see."""
    functorch = torch._C._functorch
    while isinstance(x, torch.Tensor) and functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_batchedtensor(x):
            return True
        x = functorch.get_unwrapped(x)
    return False


def _has_tangent(x) -> bool:
    """True when ``x`` is tracked by a ``torch.func`` grad/jvp level (those with a
    tangent do not report ``requires_grad``) or is a forward-AD dual tensor."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_gradtrackingtensor(x):
            return True
        x = functorch.get_unwrapped(x)
    return forward_ad.unpack_dual(x).tangent is not None


def _any_of_batch(x) -> bool:
    """``bool(any(x))`` over every ``vmap`` batch entry of a (0-d) boolean tensor."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        x = functorch.get_unwrapped(x)
    return bool(torch.any(x))


@contextlib.contextmanager
def _highest_matmul_precision():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _vjp(fun, *primals):
    """``(fun(*primals), pull)`` like ``torch.func.vjp`` (``primals`` may be tuples of
    tensors; ``pull(cotangents)`` returns cotangents shaped like ``primals``).

    Inside a ``torch.func`` transform this is ``torch.func.vjp``; outside, plain autograd
    on the same function (the first ``torch.func.vjp`` pull-back of a process imports
    ``torch._dynamo``, seconds). Either way the cotangents are differentiable when
    gradients are being recorded (double backward)."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return torch.func.vjp(fun, *primals)
    create = torch.is_grad_enabled()
    flat, spec = _pytree.tree_flatten(primals)

    def leaf(t):
        return t.view_as(t) if create and t.requires_grad else t.detach().requires_grad_(True)

    with torch.enable_grad():
        flat = [leaf(t) for t in flat]
        out = fun(*_pytree.tree_unflatten(flat, spec))
    flat_out = _pytree.tree_leaves(out)

    def pull(cotangents):
        pairs = [
            (o, c) for o, c in zip(flat_out, _pytree.tree_leaves(cotangents)) if o.requires_grad
        ]
        grads = [None] * len(flat)
        if pairs:
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    [o for o, _ in pairs],
                    flat,
                    [c for _, c in pairs],
                    retain_graph=True,
                    create_graph=create,
                    allow_unused=True,
                )
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, flat)]
        return _pytree.tree_unflatten(grads, spec)

    return out, pull


def _jvp(fun, primals, tangents):
    """``(∂fun/∂primals) tangents`` for a function returning a tuple of tensors:
    ``torch.func.jvp`` inside a ``torch.func`` transform; outside (plain autograd, where
    ``torch.autograd.forward_ad`` may be active and does not nest), the transpose of a
    VJP that is linear in its cotangents."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return torch.func.jvp(fun, primals, tangents)[1]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in primals]
        outs = fun(*leaves)
        dummies = [torch.zeros_like(o, requires_grad=True) for o in outs]
        pairs = [(o, u) for o, u in zip(outs, dummies) if o.requires_grad]
        pulled = torch.autograd.grad(
            [o for o, _ in pairs],
            leaves,
            [u for _, u in pairs],
            create_graph=True,
            allow_unused=True,
        )
        used = [(p, t) for p, t in zip(pulled, tangents) if p is not None and p.requires_grad]
        jv = [None] * len(dummies)
        if used:
            jv = torch.autograd.grad(
                [p for p, _ in used], dummies, [t for _, t in used], allow_unused=True
            )
    return tuple(torch.zeros_like(o) if j is None else j for j, o in zip(jv, outs))


def _while_loop(cond, body, state):
    """See :meth:`TorchAdapter.while_loop`."""
    while True:
        more = cond(state)
        if not _is_batched(more):
            if not bool(more):
                return state
            state = body(state)
        elif not _any_of_batch(more):
            return state
        else:
            state = _pytree.tree_map(functools.partial(_select, more), body(state), state)


class TorchAdapter(Adapter):
    """Adapter for ``torch.Tensor`` inputs (any device)."""

    name = "torch"

    has_autodiff = True

    def while_loop(self, cond, body, state):
        """Python loop; under ``torch.func.vmap`` (a batched condition) it runs while any
        batch entry's condition holds and keeps the state of the finished entries (the
        semantics of ``jax.vmap`` of ``lax.while_loop``)."""
        return _while_loop(cond, body, state)

    def vjp(self, fun, args, kwargs):
        leaves = [
            a.detach().requires_grad_(True)
            if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a
            for a in args
        ]
        with torch.enable_grad():
            out = fun(*leaves, **kwargs)
        tracked = [
            i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and a.requires_grad
        ]

        def vjp_fn(cotangent):
            grads = torch.autograd.grad(
                out, [leaves[i] for i in tracked], cotangent, allow_unused=True
            )
            result = [None] * len(args)
            for i, g in zip(tracked, grads):
                result[i] = torch.zeros_like(leaves[i]) if g is None else g
            return tuple(result)

        return out.detach(), vjp_fn

    def implicit_potentials(self, make_system, f, g, leaves):
        return _ImplicitPotentials.apply(make_system, f, g, *leaves)

    def fixed_point_output(self, step, z, value, leaves, rtol, max_iter):
        """See :meth:`otcore.backends.jax.JaxAdapter.fixed_point_output` (first order)."""
        z = tuple(v.detach() for v in z)
        return _FixedPointOutput.apply(step, rtol, max_iter, len(z), value.detach(), *z, *leaves)

    def cost_vjp(self, cost_fn, x, y, g):
        create = torch.is_grad_enabled()

        def leaf(t):
            return t.view_as(t) if create and t.requires_grad else t.detach().requires_grad_(True)

        with torch.enable_grad():
            xs, ys = leaf(x), leaf(y)
            cost = cost_fn.pairwise(xs, ys)
            dx, dy = torch.autograd.grad(cost, (xs, ys), g, create_graph=create, allow_unused=True)
        dx = torch.zeros_like(x) if dx is None else dx
        dy = torch.zeros_like(y) if dy is None else dy
        return dx, dy

    def hvp(self, fun, argnum, args, kwargs):
        x = args[argnum].detach().requires_grad_(True)
        full = (*args[:argnum], x, *args[argnum + 1 :])
        with torch.enable_grad():
            (g,) = torch.autograd.grad(fun(*full, **kwargs), x, create_graph=True)

        def product(v):
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(g, x, v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(x) if hv is None else hv.detach()

        return product

    def hessian(self, fun, argnum, args, kwargs):
        def of_arg(t):
            return fun(*args[:argnum], t, *args[argnum + 1 :], **kwargs)

        return torch.autograd.functional.hessian(of_arg, args[argnum])

    def stop_gradient(self, x):
        return x.detach()

    def envelope(self, x):
        """``x`` with a zero first derivative and a live second one (see
        :class:`_Envelope`); ``x`` itself when nothing differentiates it."""
        if not self.is_differentiating(x):
            return x
        return _Envelope.apply(x)

    def training(self):
        from otcore.backends.neural_torch import TorchNeuralOps

        return TorchNeuralOps(self)

    def is_concrete(self, x) -> bool:
        # under torch.func.vmap a tensor holds one value per batch entry: like a JAX
        # tracer, it cannot steer Python control flow (value checks are skipped)
        return not _is_batched(x)

    def is_differentiating(self, *arrays) -> bool:
        """True for tensors that require grad (with grad mode on), that carry a
        forward-mode tangent, or that a ``torch.func`` grad/jvp transform tracks."""
        tensors = [a for a in arrays if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(a.requires_grad for a in tensors):
            return True
        return any(_has_tangent(a) for a in tensors)

    def full_precision(self):
        # a user's set_float32_matmul_precision("high") enables TF32 on GPUs: too coarse
        return _highest_matmul_precision()

    def logsumexp(self, x, axis: int):
        """``log Σ exp(x)`` over ``axis``; without autograd, ``x`` (a temporary of the
        caller's) is overwritten."""
        if x.device.type != "cpu":
            return torch.logsumexp(x, dim=axis)
        # On CPUs torch's exp is 10-25x slower on arguments that underflow, which is most
        # of a Sinkhorn kernel at small ε: clamp the shifted values just above the
        # underflow (exp(-78) in float32 changes no sum that holds a 1), then exp.
        m = torch.amax(x, dim=axis, keepdim=True).detach()  # the shift carries no gradient
        finite = torch.isfinite(m)
        m_safe = torch.where(finite, m, torch.zeros_like(m))
        floor = 0.9 * math.log(torch.finfo(x.dtype).tiny)
        if (x.requires_grad and torch.is_grad_enabled()) or _is_batched(x):
            shifted = x - m_safe
            total = torch.sum(torch.exp(torch.clamp(shifted, min=floor)), dim=axis, keepdim=True)
        else:
            # otcore's callers pass a fresh temporary (e.g. u - C/ε): work in place on it
            # rather than allocate another array of that (n × m) size
            shifted = x.sub_(m_safe)
            total = torch.sum(shifted.clamp_(min=floor).exp_(), dim=axis, keepdim=True)
        out = torch.where(finite, torch.log(total) + m, m)
        return torch.squeeze(out, dim=axis)


def _select(keep_new, new, old):
    if isinstance(new, torch.Tensor):
        return torch.where(keep_new, new, old)
    return new


def _records_second_order() -> bool:
    """Inside a backward: whether a derivative of it is being taken. Plain autograd: grad
    mode is on (``create_graph=True``). ``torch.func``: a jvp level, or a grad level
    outside the innermost transform, differentiates the backward (``torch.func.hessian``
    is ``jacfwd(jacrev(.))``; ``jacrev(jacrev(.))``); ``torch.func.grad``, under ``vmap``
    or not, is first order."""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return torch.is_grad_enabled()
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    kinds = [i.key().name for i in retrieve_all_functorch_interpreters()]
    # a grad level outside the innermost one is an outer reverse pass (jacrev(jacrev))
    return "Jvp" in kinds or "Grad" in kinds[:-1]


def _check_jvp_not_differentiated():
    """PyTorch does not differentiate a custom Function's ``jvp`` rule again (a toy
    ``x ↦ x²`` gives ``jacfwd(jacfwd) = 0``): refuse rather than return wrong values."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    kinds = [i.key() for i in retrieve_all_functorch_interpreters()]
    differentiating = [k for k in kinds if k.name in ("Grad", "Jvp")]
    if len(differentiating) > 1:
        raise NotImplementedError(
            "otcore's implicit rule supports forward mode only as the outermost derivative "
            "on PyTorch (torch.func.jacfwd(torch.func.jacfwd(f)) and "
            "torch.func.jacrev(torch.func.jacfwd(f)) would be wrong): use "
            "torch.func.hessian, torch.func.jacrev(torch.func.jacrev(f)) or "
            "torch.autograd.functional.hessian"
        )


class _Envelope(torch.autograd.Function):
    """Identity whose backward passes ``ḡ - stop_gradient(ḡ)``: zero in value, so first
    derivatives hold ``x`` constant (Danskin's envelope), but a derivative of that
    backward (double backward, ``torch.func.hessian``) still carries ``ḡ``'s dependence on
    the inputs back through ``x``'s own rule (the implicit potentials). At a stationary
    point this gives the exact second derivative ``L_θθ + J_xᵀ L_xθ``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g - g.detach()

    @staticmethod
    def jvp(ctx, x_dot):
        return torch.zeros_like(x_dot)


class _ImplicitPotentials(torch.autograd.Function):
    """Identity on the solved potentials; backward = the implicit-function-theorem solve.

    With ``S w = z̄`` (:meth:`~otcore.implicit.ImplicitSystem.solve`), the leaves receive
    ``θ̄ = -ε (∂G/∂θ)ᵀ w``: the VJP of the optimality conditions
    :meth:`~otcore.implicit.ImplicitSystem.conditions`, taken by ``torch.func.vjp`` (the
    JAX adapter differentiates the same conditions). The backward is made of
    differentiable torch operations and saves the outputs themselves, so double backward
    and Hessians flow through this same rule; ``setup_context`` and the generated vmap
    rule let ``torch.func.grad``, ``torch.func.vmap`` and ``torch.func.hessian`` use it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(make_system, f, g, *leaves):
        return f.clone(), g.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        make_system, _, _, *leaves = inputs
        ctx.make_system = make_system
        ctx.save_for_backward(*output, *leaves)
        ctx.save_for_forward(*output, *leaves)

    @staticmethod
    def backward(ctx, f_bar, g_bar):
        f, g, *leaves = ctx.saved_tensors
        make_system = ctx.make_system
        with _highest_matmul_precision():
            system = make_system(tuple(leaves), f, g)
            f_bar = torch.zeros_like(f) if f_bar is None else f_bar
            g_bar = torch.zeros_like(g) if g_bar is None else g_bar
            if _records_second_order():
                # a derivative of this backward is being recorded: the solve must be
                # linear in its right-hand side even where that is zero in value (the
                # envelope rule's cotangent), and differentiable in the system itself
                wu, wv = _LinearSolve.apply(make_system, f_bar, g_bar, f, g, *leaves)
                scaled = False
            else:
                # D̂ w and D̂⁻¹ G: finite where a plan row's mass is subnormal
                wu, wv = system.solve(f_bar, g_bar, scaled=True)
                scaled = True
            e1 = system.e1
            _, pull = _vjp(lambda *lv: make_system(lv, f, g).conditions(scaled), *leaves)
            grads = pull((-e1 * wu, -e1 * wv))
        return (None, None, None, *grads)

    @staticmethod
    def jvp(ctx, _, f_dot, g_dot, *leaf_dots):
        # forward mode (torch.func.jacfwd, the outer pass of torch.func.hessian): the
        # tangent of the fixed point, ż = -ε S⁻¹ (∂G/∂θ) θ̇ (the JAX rule); the potentials
        # given to forward are a constant solve, their own tangents do not count
        _check_jvp_not_differentiated()
        f, g, *leaves = ctx.saved_tensors
        make_system = ctx.make_system
        dots = tuple(torch.zeros_like(t) if d is None else d for t, d in zip(leaves, leaf_dots))
        with _highest_matmul_precision():
            system = make_system(tuple(leaves), f, g)
            cu, cv = _jvp(lambda *lv: make_system(lv, f, g).conditions(), tuple(leaves), dots)
            e1 = system.e1
            return system.solve(-e1 * cu, -e1 * cv)


class _LinearSolve(torch.autograd.Function):
    """``w = S⁺ z`` (:meth:`~otcore.implicit.ImplicitSystem.solve`) as a differentiable
    function of the right-hand side ``z`` and of the arrays ``(f, g, leaves)`` that ``S``
    is built from, like JAX's ``lax.custom_linear_solve``: ``z̄ = S⁺ w̄`` (``S`` is
    symmetric) and ``θ̄ = -(∂(S w)/∂θ)ᵀ z̄``; forward mode ``ẇ = S⁺(ż - Ṡ w)``. The value
    is the conjugate-gradient solution itself, so a right-hand side that is zero in value
    still has its exact derivative (conjugate gradients stop at once on it)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(make_system, zu, zv, f, g, *leaves):
        return make_system(tuple(leaves), f, g).solve(zu, zv)

    @staticmethod
    def setup_context(ctx, inputs, output):
        make_system, _, _, f, g, *leaves = inputs
        ctx.make_system = make_system
        ctx.save_for_backward(*output, f, g, *leaves)
        ctx.save_for_forward(*output, f, g, *leaves)

    @staticmethod
    def backward(ctx, wu_bar, wv_bar):
        wu, wv, f, g, *leaves = ctx.saved_tensors
        make_system = ctx.make_system
        wu_bar = torch.zeros_like(wu) if wu_bar is None else wu_bar
        wv_bar = torch.zeros_like(wv) if wv_bar is None else wv_bar
        zu_bar, zv_bar = make_system(tuple(leaves), f, g).solve(wu_bar, wv_bar)
        _, pull = _vjp(lambda *t: make_system(t[2:], t[0], t[1]).matvec(wu, wv), f, g, *leaves)
        grads = pull((-zu_bar, -zv_bar))
        return (None, zu_bar, zv_bar, *grads)

    @staticmethod
    def jvp(ctx, _, zu_dot, zv_dot, *dots):
        wu, wv, *tensors = ctx.saved_tensors
        make_system = ctx.make_system
        dots = tuple(torch.zeros_like(t) if d is None else d for t, d in zip(tensors, dots))
        su, sv = _jvp(
            lambda *t: make_system(t[2:], t[0], t[1]).matvec(wu, wv), tuple(tensors), dots
        )
        zu_dot = torch.zeros_like(wu) if zu_dot is None else zu_dot
        zv_dot = torch.zeros_like(wv) if zv_dot is None else zv_dot
        f, g, *leaves = tensors
        return make_system(tuple(leaves), f, g).solve(zu_dot - su, zv_dot - sv)


def _iterate_to_fixed_point(update, like, rtol, max_iter, device):
    """``x ← update(x)`` from zeros shaped like ``like`` (a tuple), checked every 10 steps
    for a relative change below ``rtol``, at most ``max_iter`` steps; under
    ``torch.func.vmap`` until every batch entry has converged."""

    def body(s):
        x, i = s["x"], s["i"]
        for _ in range(min(10, max_iter - i) - 1):
            x = update(x)
        new = update(x)
        change = sum(torch.sum((u - v) ** 2) for u, v in zip(new, x))
        size = sum(torch.sum(u * u) for u in new)
        return {"x": new, "i": i + 10, "more": change > rtol**2 * size}

    state = {
        "x": tuple(torch.zeros_like(v) for v in like),
        "i": 0,
        "more": torch.ones((), dtype=torch.bool, device=device),
    }
    return _while_loop(lambda s: s["more"] & (s["i"] < max_iter), body, state)["x"]


class _FixedPointOutput(torch.autograd.Function):
    """``step(z, leaves)[1]`` at a fixed point ``z``; backward = the fixed-point adjoint.

    ``λ ← (∂step_z/∂z)ᵀ λ + (∂out/∂z)ᵀ ō`` is iterated from 0 (checked every 10 steps,
    relative change ``rtol``, at most ``max_iter`` steps) with ``torch.func.vjp`` of one
    step, then pulled back to the leaves once (forward mode iterates the tangent
    instead). Under ``torch.func.vmap`` the loop runs until every batch entry has
    converged. First order only: a backward that is itself differentiated (double
    backward, ``torch.func.hessian``, ``jacrev(jacrev)``) raises
    :class:`~otcore.UnsupportedDerivativeError` (it holds ``z`` constant, so its
    derivative would be wrong).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(step, rtol, max_iter, n_z, value, *tensors):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        step, rtol, max_iter, n_z, _, *tensors = inputs
        ctx.step, ctx.rtol, ctx.max_iter, ctx.n_z = step, rtol, max_iter, n_z
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)

    @staticmethod
    def jvp(ctx, _step, _rtol, _max_iter, _n_z, _value_dot, *dots):
        # forward mode: ż ← (∂step_z/∂z) ż + (∂step_z/∂θ) θ̇ to the fixed point, then
        # ȯ = (∂out/∂z) ż + (∂out/∂θ) θ̇ (the tangents of the solved z do not count)
        _check_jvp_not_differentiated()
        tensors = ctx.saved_tensors
        n_z, step = ctx.n_z, ctx.step
        z, leaves = tuple(tensors[:n_z]), tuple(tensors[n_z:])
        leaf_dots = tuple(
            torch.zeros_like(t) if d is None else d for t, d in zip(leaves, dots[n_z:])
        )

        def flat_step(*args):
            z_new, out = step(tuple(args[:n_z]), tuple(args[n_z:]))
            return (*z_new, out)

        def tangent(z_dot):
            return _jvp(flat_step, (*z, *leaves), (*z_dot, *leaf_dots))

        z_dot = _iterate_to_fixed_point(
            lambda zd: tuple(tangent(zd)[:n_z]), z, ctx.rtol, ctx.max_iter, z[0].device
        )
        return tangent(z_dot)[-1]

    @staticmethod
    def backward(ctx, o_bar):
        if _records_second_order():
            raise UnsupportedDerivativeError(FIXED_POINT_SECOND_ORDER)
        tensors = ctx.saved_tensors
        n_z, rtol, max_iter = ctx.n_z, ctx.rtol, ctx.max_iter
        z, leaves = tuple(tensors[:n_z]), tuple(tensors[n_z:])
        _, pull = _vjp(ctx.step, z, leaves)

        def adjoint(lam):
            return tuple(pull((lam, o_bar))[0])

        lam = _iterate_to_fixed_point(adjoint, z, rtol, max_iter, o_bar.device)
        grads = pull((lam, o_bar))[1]
        return (None, None, None, None, None, *([None] * n_z), *grads)
