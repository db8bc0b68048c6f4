#!/usr/bin/env python3
"""Worker of benchmarks/he_anchor.py, run by the SPU 0.9.5 venv's python (SPU needs numpy<2).

One (protocol, op, shape) per call, both parties in one process (spu.utils.simulation, in-memory link):
  1. a 1-element secret product first, so that the protocol's one-off setup (CHEETAH: Ferret silent-OT
     base correlations, HE keys) is measured on its own;
  2. the op itself (inputs secret-shared: weights are secret too, as in the toolkit).
SPU's profiler prints one "Link details" line per run (rank 0: send/recv bytes, send actions) and the
execution time; the launcher parses them from this process's stdout. The simulator's link gets a
30-minute receive timeout (reference/environment.md: CHEETAH's large matmuls outlast the default).
Prints one JSON line `RESULT {...}` with the max abs error against numpy float64.
"""
import argparse
import json
import math

import numpy as np
import spu.libspu as libspu
import spu.utils.simulation as spsim


class _LongDesc(libspu.link.Desc):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.recv_timeout_ms = 1_800_000


libspu.link.Desc = _LongDesc


def _gelu(x):
    import jax.numpy as jnp
    return 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
    import jax.numpy as jnp
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def _layernorm(x):
    import jax
    import jax.numpy as jnp
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    return xc * jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + 1e-5)


def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_layernorm(x):
    xc = x - x.mean(-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)


OPS = {  # op -> (jax fn, numpy reference, input generator from the shape list)
    "matmul": (lambda x, w: x @ w, lambda x, w: x @ w,
               lambda rng, s: [rng.standard_normal((s[0], s[1])), rng.standard_normal((s[1], s[2])) / math.sqrt(s[1])]),
    "gelu": (_gelu, _np_gelu, lambda rng, s: [rng.standard_normal(tuple(s))]),
    "softmax": (_softmax, _np_softmax, lambda rng, s: [rng.standard_normal(tuple(s)) * 2.0]),
    "layernorm": (_layernorm, _np_layernorm, lambda rng, s: [rng.standard_normal(tuple(s))]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["SEMI2K", "CHEETAH"], required=True)
    ap.add_argument("--op", choices=sorted(OPS), required=True)
    ap.add_argument("--shape", required=True, help="dims joined by x; matmul: MxKxN")
    ap.add_argument("--fxp", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    shape = [int(v) for v in a.shape.split("x")]
    cfg = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, a.protocol), field=libspu.FieldType.FM64,
                               fxp_fraction_bits=a.fxp)
    cfg.enable_pphlo_profile = True
    cfg.enable_hal_profile = True
    sim = spsim.Simulator(2, cfg)
    one = np.ones((1,))
    spsim.sim_jax(sim, lambda u, v: u * v)(one, one)          # setup run (its Link details line comes first)
    fn, ref, gen = OPS[a.op]
    inputs = gen(np.random.default_rng(a.seed), shape)
    out = np.asarray(spsim.sim_jax(sim, fn)(*inputs))
    err = float(np.abs(out - ref(*inputs)).max())
    print("RESULT " + json.dumps(dict(protocol=a.protocol, op=a.op, shape=a.shape, max_abs_err=err)), flush=True)


if __name__ == "__main__":
    main()
