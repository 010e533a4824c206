"""Neural W2 dual: otcore (JAX, PyTorch) vs OTT-JAX ``W2NeuralDual`` on pairs with a known map.

The pairs follow Korotin et al. (2021)'s construction ("Mix3toMix10"), built here because
their pretrained checkpoints are not available offline:

* source P: a 3-component Gaussian mixture in R^d (centres: each coordinate a random
  permutation of {0, 1, 2}, centred; covariances 0.4²·MMᵀ with M a Gaussian matrix with
  unit-norm rows), standardised to zero mean and E‖x‖² = d;
* potential ψ(x) = ICNN(x) + ½·α‖x‖² (α = 1e-2): a fixed, randomly initialised input-convex
  network with CELU activations and hidden sizes [max(2d, 64), max(2d, 64), max(d, 32)];
* target Q = T*#P with T*(x) = (∇ψ(x) − μ)/s, μ, s chosen so that Q has zero mean and
  E‖y‖² = d. T* is the gradient of the convex (ψ(x) − ⟨μ, x⟩)/s, hence the exact W2 map.

Metrics on 4096 fresh source samples (Korotin's ``metrics.py``):
L2-UVP = 100·E‖T̂(x) − T*(x)‖² / Var(Q) and cos = E⟨T*(x)−x, T̂(x)−x⟩ /
sqrt(E‖T*(x)−x‖² E‖T̂(x)−x‖²), for otcore-jax, otcore-torch, OTT-JAX (its learned ∇f,
not its ``to_dual_potentials``, which halves the displacement in 0.6.0) and the linear
(Bures) baseline between Gaussian fits of P and Q (2^15 samples each).

Every solver gets the same budget: ``--iters`` training iterations with batches of
``--batch`` fresh samples, ICNN ``--hidden`` for f and g, Adam(lr, 0.5, 0.9) for both,
the default conjugate solver (L-BFGS, gtol 1e-5, 20 iterations), float32, seed 0.
Seconds per training iteration are measured after one warm-up iteration (compilation).

Example::

    python benchmarks/neural_dual.py                       # d in {2, 8, 32, 64}
    python benchmarks/neural_dual.py --dims 2 8 --iters 500 --solvers otcore-jax ott-jax
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import otcore as ot  # noqa: E402

# -- benchmark pair ------------------------------------------------------------------------


def _celu(jnp, x):
    return jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0.0)))


class KorotinPair:
    """Gaussian-mixture source and the exact map T* = ∇ψ of a random convex potential."""

    def __init__(self, d, seed=0, sharp=2.0, tau=0.3):
        import jax
        import jax.numpy as jnp

        self.d = d
        rng = np.random.default_rng(seed)
        # source: 3-component mixture, Korotin's RandomGaussianMixSampler(num=3, dist=1, std=.4)
        centers = np.stack([rng.permutation(3) for _ in range(d)], axis=1).astype(float)
        centers -= centers.mean(0)
        mats = []
        for _ in range(3):
            m = rng.normal(size=(d, d))
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            mats.append(0.4 * m)
        self.centers, self.mats = centers, np.stack(mats)
        raw = self._raw_source(rng, 2**15)
        self.src_mean = raw.mean(0)
        self.src_scale = math.sqrt(d / np.mean(np.sum((raw - self.src_mean) ** 2, 1)))

        # potential: random ICNN (CELU, non-negative z-weights) + α/2 ‖x‖²
        h1, h2, h3 = max(2 * d, 64), max(2 * d, 64), max(d, 32)
        k = jax.random.split(jax.random.PRNGKey(seed + 1), 8)
        s = 1.0 / math.sqrt(d)
        params = {
            "w0": jax.random.normal(k[0], (d, h1)) * s * sharp,
            "b0": jax.random.normal(k[1], (h1,)),
            "wz1": jnp.abs(jax.random.normal(k[2], (h1, h2))) / h1 * 2.0,
            "w1": jax.random.normal(k[3], (d, h2)) * s * sharp,
            "b1": jax.random.normal(k[4], (h2,)),
            "wz2": jnp.abs(jax.random.normal(k[5], (h2, h3))) / h2 * 2.0,
            "w2": jax.random.normal(k[6], (d, h3)) * s * sharp,
            "wout": jnp.abs(jax.random.normal(k[7], (h3,))) / h3 * 4.0,
        }
        # a smooth max of 10 affine pieces (temperature tau): pushes the mixture apart into
        # up to 10 clusters, the nonlinearity of Korotin's "Mix3toMix10" potentials
        k2 = jax.random.split(jax.random.PRNGKey(seed + 2), 2)
        lse_a = jax.random.normal(k2[0], (d, 10)) * 2.0
        lse_b = jax.random.normal(k2[1], (10,))
        alpha, tau = 1e-2, tau

        def psi(x):
            z = _celu(jnp, x @ params["w0"] + params["b0"])
            z = _celu(jnp, z @ params["wz1"] + x @ params["w1"] + params["b1"])
            z = _celu(jnp, z @ params["wz2"] + x @ params["w2"])
            lse = tau * jax.nn.logsumexp((x @ lse_a + lse_b) / tau)
            return z @ params["wout"] + lse + 0.5 * alpha * jnp.sum(x * x)

        grad = jax.jit(jax.vmap(jax.grad(psi)))
        self._grad = lambda x: np.asarray(grad(jnp.asarray(x, dtype=jnp.float32)), dtype=float)
        y = self._grad(self.sample_source(2**15, seed + 2))
        self.tgt_mean = y.mean(0)
        self.tgt_scale = math.sqrt(d / np.mean(np.sum((y - self.tgt_mean) ** 2, 1)))

    def _raw_source(self, rng, n):
        comp = rng.integers(3, size=n)
        z = rng.normal(size=(n, self.d))
        return self.centers[comp] + np.einsum("nij,nj->ni", self.mats[comp], z)

    def sample_source(self, n, seed):
        rng = np.random.default_rng(seed)
        return (self._raw_source(rng, n) - getattr(self, "src_mean", 0.0)) * getattr(
            self, "src_scale", 1.0
        )

    def T(self, x):
        return (self._grad(x) - self.tgt_mean) * self.tgt_scale

    def sample_target(self, n, seed):
        return self.T(self.sample_source(n, seed))

    def loaders(self, batch, seed):
        def make(kind, s):
            rng = np.random.default_rng(s)
            while True:
                k = int(rng.integers(2**31))
                out = self.sample_source(batch, k) if kind == 0 else self.sample_target(batch, k)
                yield out.astype(np.float32)

        return make(0, seed), make(1, seed + 1)


def _sqrtm(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.maximum(w, 0))) @ v.T


def bures_map(x, y):
    s1, s2 = np.cov(x.T), np.cov(y.T)
    h = _sqrtm(s1)
    hi = np.linalg.inv(h)
    a = hi @ _sqrtm(h @ s2 @ h) @ hi
    m1, m2 = x.mean(0), y.mean(0)
    return lambda z: m2 + (z - m1) @ a.T


def metrics(t_hat, t_star, x, var_q):
    uvp = 100.0 * np.mean(np.sum((t_hat - t_star) ** 2, 1)) / var_q
    a, b = t_star - x, t_hat - x
    cos = np.mean(np.sum(a * b, 1)) / math.sqrt(
        np.mean(np.sum(a * a, 1)) * np.mean(np.sum(b * b, 1))
    )
    return float(uvp), float(cos)


# -- solvers ---------------------------------------------------------------------------------


def run_otcore(backend, pair, args):
    nets = [ot.neural.ICNN(pair.d, tuple(args.hidden)) for _ in range(2)]
    solver = ot.neural.W2NeuralDual(
        pair.d,
        neural_f=nets[0],
        neural_g=nets[1],
        optimizer_f=ot.neural.Adam(args.lr, 0.5, 0.9),
        optimizer_g=ot.neural.Adam(args.lr, 0.5, 0.9),
        num_train_iters=1,
        backend=backend,
        seed=0,
        progress_bar=False,
    )
    src, tgt = pair.loaders(args.batch, 10)
    solver(src, tgt)  # warm-up (compilation on JAX)
    solver.num_train_iters = args.iters - 1
    t0 = time.perf_counter()
    pot = solver(src, tgt)
    if backend == "jax":
        import jax

        jax.block_until_ready(solver._state[0])
    per_iter = (time.perf_counter() - t0) / max(args.iters - 1, 1)
    return lambda x: np.asarray(pot.transport(x.astype(np.float32)), dtype=float), per_iter


def run_ott(pair, args):
    # ott.neural imports diffrax (flow matching) at package import: stub it if missing
    try:
        import diffrax  # noqa: F401
    except ImportError:

        class _Stub(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (), {})

        sys.modules["diffrax"] = _Stub("diffrax")
    import jax
    import jax.numpy as jnp
    import optax
    from ott.neural.methods.neuraldual import W2NeuralDual
    from ott.neural.networks.icnn import ICNN

    solver = W2NeuralDual(
        pair.d,
        neural_f=ICNN(pair.d, list(args.hidden), pos_weights=True),
        neural_g=ICNN(pair.d, list(args.hidden), pos_weights=True),
        optimizer_f=optax.adam(args.lr, b1=0.5, b2=0.9),
        optimizer_g=optax.adam(args.lr, b1=0.5, b2=0.9),
        num_train_iters=1,
        rng=jax.random.PRNGKey(0),
    )
    src, tgt = pair.loaders(args.batch, 10)
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        solver(src, tgt, src, tgt)
        solver.num_train_iters = args.iters - 1
        t0 = time.perf_counter()
        solver(src, tgt, src, tgt)
        jax.block_until_ready(solver.state_f.params)
        per_iter = (time.perf_counter() - t0) / max(args.iters - 1, 1)
    grad_f = jax.jit(solver.state_f.potential_gradient_fn(solver.state_f.params))
    return lambda x: np.asarray(grad_f(jnp.asarray(x, dtype=jnp.float32)), dtype=float), per_iter


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 64])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--solvers", nargs="+", default=["otcore-jax", "otcore-torch", "ott-jax"])
    p.add_argument("--out", default=str(HERE / "results" / "neural_dual.json"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads per framework")
    args = p.parse_args(argv)
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={args.threads}",
    )
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass

    rows = []
    for d in args.dims:
        pair = KorotinPair(d, seed=0)
        x_eval = pair.sample_source(4096, 12345)
        t_star = pair.T(x_eval)
        var_q = float(np.sum(np.var(pair.sample_target(2**15, 777), axis=0)))
        lin = bures_map(pair.sample_source(2**15, 1), pair.sample_target(2**15, 2))
        uvp, cos = metrics(lin(x_eval), t_star, x_eval, var_q)
        ident_uvp = 100.0 * np.mean(np.sum((x_eval - t_star) ** 2, 1)) / var_q
        rows.append({"d": d, "solver": "linear (Bures)", "l2_uvp": uvp, "cos": cos})
        print(
            f"d={d}: Var(Q)={var_q:.2f}, identity L2-UVP {ident_uvp:.1f} %, "
            f"linear L2-UVP {uvp:.2f} %, cos {cos:.3f}",
            flush=True,
        )
        for name in args.solvers:
            try:
                if name == "ott-jax":
                    fmap, per_iter = run_ott(pair, args)
                else:
                    fmap, per_iter = run_otcore(name.split("-")[1], pair, args)
            except ImportError as e:
                print(f"  {name}: skipped ({e})")
                continue
            uvp, cos = metrics(fmap(x_eval), t_star, x_eval, var_q)
            rows.append({"d": d, "solver": name, "l2_uvp": uvp, "cos": cos, "s_per_iter": per_iter})
            print(
                f"  {name:13s} L2-UVP {uvp:7.2f} %  cos {cos:.3f}  {per_iter * 1e3:8.1f} ms/iter",
                flush=True,
            )
            _write(args, rows)

    print("\n| d | solver | L2-UVP % | cos | ms / iter | vs OTT |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ott = next((q for q in rows if q["d"] == r["d"] and q["solver"] == "ott-jax"), None)
        ms = f"{r['s_per_iter'] * 1e3:.1f}" if "s_per_iter" in r else "—"
        ratio = (
            f"{r['s_per_iter'] / ott['s_per_iter']:.2f}×"
            if ott and "s_per_iter" in r and r["solver"] != "ott-jax"
            else "—"
        )
        print(f"| {r['d']} | {r['solver']} | {r['l2_uvp']:.2f} | {r['cos']:.3f} | {ms} | {ratio} |")

    _write(args, rows)
    print(f"\nwrote {args.out}")


def _write(args, rows):
    out = {
        "config": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
