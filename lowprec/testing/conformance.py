"""Property checks that every format, scale rule, estimator and recipe must pass (optax-style).

``tests/conformance/test_registered.py`` runs them over everything registered; call them on your
own registrations the same way::

    lp.formats.register("e3m3", lp.formats.FloatFormat(3, 3))
    check_format("e3m3")

Each check raises ``AssertionError`` naming the thing and the property that failed, with an
example input. Small arrays throughout: the checks run in seconds on a CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowprec import formats, nn, ops
from lowprec.formats import Format
from lowprec.quant import Estimator, Quantizer, get_estimator, scaling

# Amaxes whose ideal scales lie well inside E8M0's range (no scale rule's exponent clamp binds).
_TYPICAL_AMAX = np.array([m * 2.0 ** k for k in range(-20, 21, 3) for m in (1.0, 1.1, 1.5, 1.99)], np.float32)
# All-zero groups and tiny ones: fp32 subnormal (read as 0 on XLA:CPU), smallest normal, near it.
_TINY_AMAX = np.array([0.0, 1e-40, 2.0 ** -126, 3e-38, 1e-30], np.float32)
_BIG_SCALE_FORMAT = 2.0 ** 23  # above this max a tiny group's scale may underflow (quant.scaling)


def _fail(what: str, prop: str, detail: str = "") -> None:
    raise AssertionError(f"{what}: {prop}" + (f" ({detail})" if detail else ""))


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _same_bits(got, want) -> np.ndarray:
    """Elementwise: identical bits, or both NaN."""
    got, want = np.asarray(got), np.asarray(want)
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    return (_bits(got) == _bits(want)) | both_nan


def _same_value(got, want) -> np.ndarray:
    """Elementwise: equal values (+0 == -0), or both NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return (got == want) | (np.isnan(got) & np.isnan(want))


def _expect(ok, what: str, prop: str, x=None, got=None, want=None) -> None:
    ok = np.asarray(ok)
    if ok.all():
        return
    bad = ~ok.reshape(-1)
    parts = [f"{int(bad.sum())} of {bad.size} entries"]
    for name, arr in (("x", x), ("got", got), ("want", want)):
        if arr is not None:
            parts.append(f"{name}={np.asarray(arr).reshape(-1)[bad][:4].tolist()}")
    _fail(what, prop, ", ".join(parts))


# ---- formats ----

def _padded(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` repeated at its last entry up to length ``n`` (``2**bits``): one input shape per bit width."""
    return np.concatenate([a, np.full(n - a.size, a[-1], a.dtype)])


def _format_probe(fmt: Format, vals: np.ndarray | None) -> np.ndarray:
    """fp32 inputs: random ones, out-of-range and tiny magnitudes, the values and their midpoints."""
    rng = np.random.default_rng(0)
    top = np.float32(min(fmt.max, 1e37))
    rand = rng.standard_normal(240).astype(np.float32) * (top / np.float32(3))
    edges = np.array([0.0, top, 2 * top, 1e30, 3.4e38, 1e-30, 1e-38, 1e-40], np.float32)
    parts = [rand, edges, -edges]
    if vals is not None:
        n = 2 ** fmt.bits
        parts += [_padded(vals.astype(np.float32), n), _padded(((vals[:-1] + vals[1:]) / 2).astype(np.float32), n)]
    return np.concatenate(parts)


def _format_outputs(fmt: Format, x, neg_x, v, codes, key) -> dict:
    """Every array the format checks read, from one jitted function.
    ``neg_x`` is ``-x`` negated outside: XLA:CPU flushes a subnormal result of a traced
    negation to zero, an eager one not."""
    q = fmt.quantize(x)
    out = {"q": q, "qq": fmt.quantize(q), "neg": fmt.quantize(neg_x), "enc": fmt.encode(x),
           "sr": fmt.quantize(x, rounding="stochastic", key=key), "bf16": fmt.quantize(x.astype(jnp.bfloat16))}
    out["lo"], out["hi"] = fmt.neighbors(x)
    if v is not None:
        dec = fmt.decode(codes)
        out.update(fixed=fmt.quantize(v), back=fmt.decode(fmt.encode(v)), dec=dec, again=fmt.decode(fmt.encode(dec)))
    return out


_format_outputs_jit = jax.jit(_format_outputs, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _stochastic(fmt: Format, x, key):
    return fmt.quantize(x, rounding="stochastic", key=key)


def check_format(fmt: Format | str) -> None:
    """A format's contract: ``quantize`` keeps shape and dtype, is finite for finite input
    (saturating), idempotent, lands on ``values()`` and fixes each of them; codes round-trip;
    a symmetric value set rounds symmetrically; stochastic rounding picks a neighbour; every
    output of jit equals the eager one, bit for bit."""
    fmt = formats.get(fmt)
    what = f"format {fmt.name!r}"
    vals = fmt.values() if fmt.bits <= 16 else None
    x = _format_probe(fmt, vals)
    v = None if vals is None else _padded(vals.astype(np.float32), 2 ** fmt.bits)
    codes = None if vals is None else np.arange(2 ** fmt.bits, dtype=np.uint32).astype(fmt.code_dtype)
    args = (jnp.asarray(x), jnp.asarray(-x), v, codes, jax.random.key(0))
    out = {k: np.asarray(a) for k, a in _format_outputs_jit(fmt, *args).items()}
    # Eagerly only these, on 512 of the inputs (the random ones, the edges, values and midpoints
    # evenly spaced): each eager primitive compiles on its own, once per shape.
    pick = np.concatenate([np.arange(256), np.linspace(min(256, x.size - 1), x.size - 1, 256).astype(int)])
    xe = jnp.asarray(x[pick])
    eager = {"q": fmt.quantize(xe), "enc": fmt.encode(xe), "sr": fmt.quantize(xe, rounding="stochastic", key=args[-1])}
    for k, a in eager.items():
        _expect(_same_bits(out[k][pick] if k != "sr" else np.asarray(_stochastic(fmt, xe, args[-1])), a), what,
                f"jit equals eager ({k})", x[pick], out[k][pick], a)
    q = out["q"]
    if q.shape != x.shape or q.dtype != x.dtype or out["bf16"].dtype != jnp.bfloat16:
        _fail(what, "quantize keeps shape and dtype", f"{x.dtype}{x.shape} gave {q.dtype}{q.shape}, "
              f"bfloat16 gave {out['bf16'].dtype}")
    _expect(np.isfinite(q), what, "finite input gives finite output (overflow='saturate')", x, q)
    _expect(_same_bits(out["qq"], q), what, "quantize is idempotent: q(q(x)) == q(x)", x, out["qq"], q)
    inside = np.abs(x) <= fmt.max
    sr, lo, hi = out["sr"][inside], out["lo"][inside], out["hi"][inside]
    _expect((sr == lo) | (sr == hi), what, "stochastic rounding gives one of the two neighbours", x[inside], sr)
    if vals is not None:
        _check_value_set(fmt, what, vals, x, v, codes, out)


def _check_value_set(fmt: Format, what: str, vals: np.ndarray, x, v, codes, out: dict) -> None:
    q = out["q"]
    _expect(np.isin(q, v), what, "quantize lands on values()", x, q)
    _expect(out["fixed"] == v, what, "each of values() quantizes to itself", v, out["fixed"], v)
    _expect(out["back"] == v, what, "decode(encode(v)) == v for each of values()", v, out["back"], v)
    dec = out["dec"]
    valid = np.isfinite(dec) & np.isin(dec, v)
    _expect(_same_bits(out["again"][valid], dec[valid]), what,
            "decode(encode(decode(c))) == decode(c) for each code of a value", codes[valid], out["again"][valid],
            dec[valid])
    if np.array_equal(vals, -vals[::-1]):
        _expect(out["neg"] == -q, what, "a symmetric value set rounds symmetrically: q(-x) == -q(x)", x,
                out["neg"], -q)


# ---- scale rules ----

def _scaled_amax_bounds(rule: str, fmt: Format) -> tuple[float, float, bool]:
    """(lo, hi, hi_inclusive) for amax / scale over typical amaxes, as each rule guarantees
    (``quant.scaling.scale_from_amax``; ``pow2_ceil_bf16``: ``quant.pow2_bf16``)."""
    m, e, ulp = fmt.max, 2.0 ** fmt.emax, 2.0 ** -22
    f43 = float(np.float32(4 / 3))  # the factor is fp32(4/3), a little above 4/3
    return {
        "fp32": (m * (1 - ulp), m * (1 + ulp), True),         # one fp32 rounding of amax / max
        "pow2_floor": (e, 2 * e, False),                        # OCP MX: may clip up to 2**(emax+1)
        "pow2_ceil": (m / 2, m, True),                          # never clips
        "pow2_nearest": (0.75 * m * (1 - ulp), 1.5 * m * (1 + ulp), True),  # E8M0 nearest of amax / max
        "pow2_ceil_bf16": (m / 2, m * 2 ** (1 / 16), True),     # bf16 log2 may halve the scale
        "floor_x4/3": (e / f43, 2 * e / f43, False),            # Tseng et al.: never clips
    }[rule]


def check_scale_rule(rule: str | Format, fmt: Format | str = "e2m1fn") -> None:
    """A scale rule's contract for element format ``fmt``: scales positive and finite for every
    finite amax (all-zero groups get 1, tiny ones a positive scale), ``amax / scale`` within the
    rule's bounds (a format rule: the scale is a neighbour of ``amax / max`` on that format's
    grid), positive and finite scales and outputs through a Quantizer (two-level for a format rule
    too), and jit equals eager."""
    fmt = formats.get(fmt)
    scaling.check_rule(rule)
    rule = rule if isinstance(rule, str) else rule.name
    what = f"scale rule {rule!r} on {fmt.name}"
    if fmt.max > _BIG_SCALE_FORMAT:
        raise ValueError(f"check_scale_rule needs an element format with max <= 2**23; {fmt.name} has {fmt.max:g} "
                         "(a tiny group's scale may underflow to 0 there, as quant.scaling documents)")
    base, factor = scaling.FACTORED_RULES.get(rule, (rule, 1.0))
    am = np.concatenate([_TINY_AMAX, _TYPICAL_AMAX])
    s = np.asarray(scaling.scale_from_amax(jnp.asarray(am), fmt, rule), np.float64)
    _expect(np.isfinite(s) & (s > 0), what, "scales are positive and finite", am, s)
    _expect(s[am == 0] == 1, what, "an all-zero group gets scale 1", am[am == 0], s[am == 0])
    jit_s = jax.jit(lambda a: scaling.scale_from_amax(a, fmt, rule))(jnp.asarray(am))
    _expect(_same_bits(np.asarray(jit_s, np.float64), s), what, "jit equals eager", am, jit_s, s)
    typ = s[len(_TINY_AMAX):]
    if rule in scaling.STAT_RULES:  # the scale is the power of two at or below the statistic
        ratio = _TYPICAL_AMAX / typ
        _expect((ratio >= 1) & (ratio < 2) & (np.log2(typ) % 1 == 0), what,
                "scale is the power of two at or below the group statistic", _TYPICAL_AMAX, typ)
    elif rule in scaling.SCALE_RULES:
        ratio = _TYPICAL_AMAX.astype(np.float64) / typ
        if rule == "pow2_ceil_bf16":  # its bound holds for quotients max / amax in [2**-15, 2**16]
            keep = (fmt.max / _TYPICAL_AMAX >= 2.0 ** -15) & (fmt.max / _TYPICAL_AMAX <= 2.0 ** 16)
            ratio = ratio[keep]
        lo, hi, closed = _scaled_amax_bounds(rule, fmt)
        inside = (ratio >= lo) & ((ratio <= hi) if closed else (ratio < hi))
        _expect(inside, what, f"amax / scale lies in [{lo:g}, {hi:g}{']' if closed else ')'}", got=ratio)
    else:
        _check_format_scales(formats.get(rule), fmt, what, typ)
    _check_quantizer_scales(rule, fmt, what, factor)


def _check_format_scales(sfmt: Format, fmt: Format, what: str, s: np.ndarray) -> None:
    r = _TYPICAL_AMAX / np.float32(fmt.max)  # the rule's quotient, correctly rounded in fp32
    grid = sfmt.values()
    pos = grid[grid > 0]
    keep = (r >= pos[0]) & (r <= pos[-1])
    r, s = r[keep].astype(np.float64), s[keep]
    lo = grid[np.searchsorted(grid, r, side="right") - 1]
    hi = grid[np.minimum(np.searchsorted(grid, r, side="left"), grid.size - 1)]
    _expect((s == lo) | (s == hi), what, f"scale is amax / max rounded onto {sfmt.name}", r, s)


def _check_quantizer_scales(rule: str, fmt: Format, what: str, factor: float) -> None:
    """Rows of zeros, tiny values and ordinary ones through ``Quantizer(scale=rule)`` per token."""
    rows = [np.zeros(8), np.full(8, 1e-40), np.full(8, 2.0 ** -126) * np.arange(1, 9), np.linspace(-3, 5, 8),
            np.linspace(-1e4, 1e3, 8)]
    x = jnp.asarray(np.stack(rows), jnp.float32)
    two_level = (False,) if rule in scaling.SCALE_RULES or not scaling.two_level_fits(fmt, formats.get(rule)) else (
        False, True)
    for tensor_scale in two_level:
        q = Quantizer(fmt, "token", scale=rule, tensor_scale=tensor_scale, kernel="xla")
        s, y, ts = (np.asarray(a) for a in _quantizer_scales(q, x))
        label = f"{what} ({q})"
        _expect(np.isfinite(s) & (s > 0), label, "a Quantizer's scales are positive and finite", got=s)
        _expect(np.isfinite(y), label, "fake-quantized rows (zeros, tiny, ordinary) are finite", x, y)
        if factor != 1.0:
            _expect(ts == np.float32(factor), label, "the factor is the tensor scale", got=ts)


@functools.partial(jax.jit, static_argnums=0)
def _quantizer_scales(q: Quantizer, x):
    """(the scale of each group, ``q(x)``, the tensor scale or 1)."""
    qt = q.quantize(x)
    ts = jnp.ones((), jnp.float32) if qt.tensor_scale is None else qt.tensor_scale
    return scaling.combine(qt.group_scales(), qt.tensor_scale), q(x), ts


# ---- estimators ----

def check_estimator(est: Estimator | str, fmt: Format | str = "e2m1fn") -> None:
    """An estimator's gradient contract on ``fmt``: the backward of a quantizer with it has the
    input's shape and dtype, is finite, equals the upstream gradient times
    ``derivative(x / scale, fmt)`` (STE: the upstream gradient itself), also where the forward
    clipped and for all-zero input, and jit equals eager (in value: a zero's sign may differ)."""
    est, fmt = get_estimator(est), formats.get(fmt)
    what = f"estimator {est.name!r} on {fmt.name}"
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    x[-1] = 0  # an all-zero row: a group whose scale is 1
    x = jnp.asarray(x)
    g = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8)), jnp.float32)
    clip_scale = float(np.max(np.abs(x))) / (2 * fmt.max)  # half the range: the forward clips
    clipping = Quantizer(fmt, "tensor", source="fixed", fixed_scale=clip_scale, estimator=est)
    per_token = Quantizer(fmt, "token", estimator=est, kernel="xla")
    for q, xin in ((per_token, x), (clipping, x), (per_token, x.astype(jnp.bfloat16))):
        label = f"{what} ({q}, {xin.dtype} input)"
        grad, xs, d = (np.asarray(a) for a in _gradient_parts(q, xin, g.astype(xin.dtype)))
        if grad.shape != xin.shape or grad.dtype != xin.dtype:
            _fail(label, "the gradient has the input's shape and dtype", f"got {grad.dtype}{grad.shape}")
        grad, g32 = grad.astype(np.float32), np.asarray(g.astype(xin.dtype), np.float32)
        _expect(np.isfinite(grad), label, "the gradient is finite", xs, grad)
        want = (g32 * d).astype(xin.dtype).astype(np.float32)
        _expect(np.isclose(grad, want, rtol=2.0 ** -20, atol=0), label,
                "gradient == upstream * derivative(x / scale)", xs, grad, want)
        if est.fn is None:
            _expect(grad == g32, label, "STE passes the upstream gradient unchanged", xs, grad, g32)
    eager = np.asarray(jax.vjp(clipping, x)[1](g)[0])  # eagerly once: each eager primitive compiles on its own
    jitted = np.asarray(_gradient_parts(clipping, x, g)[0])
    # Values, not bits: XLA may rewrite ``g * mask`` as a select, so a masked -0 comes out +0.
    _expect(_same_value(jitted, eager), f"{what} ({clipping})", "jit(gradient) equals eager", x, jitted, eager)


@functools.partial(jax.jit, static_argnums=0)
def _gradient_parts(q: Quantizer, x, g):
    """(the gradient of ``q`` at ``x`` for upstream ``g``, the scaled input ``x / scale``, the
    estimator's derivative there)."""
    grad = jax.vjp(q, x)[1](g)[0]
    qt = q.quantize(x)
    xg, _ = q.granularity.to_groups(x.astype(jnp.float32))
    xs = q.granularity.from_groups(scaling.apply_inverse(xg, scaling.combine(qt.group_scales(), qt.tensor_scale)),
                                   x.shape)
    return grad, xs, q.estimator.derivative(xs, q.format)


# ---- recipes ----

_TOKENS, _IN, _OUT = 64, 64, 64  # multiples of every block, tile and Hadamard size of the named recipes


def _dense_step(recipe, key):
    """``(x, params) -> (y, input gradient, kernel gradient)`` of a tiny QuantDense under
    ``recipe`` (the backward from a fixed cotangent), and its parameters."""
    layer = nn.QuantDense(_IN, _OUT, recipe=recipe, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    ct = jnp.linspace(-1.0, 1.0, _TOKENS * _OUT, dtype=jnp.float32).reshape(_TOKENS, _OUT)

    def step(params, x):
        y, vjp = jax.vjp(lambda p, v: nnx.merge(graphdef, p, rest)(v, key=key), params, x)
        gp, gx = vjp(ct.astype(y.dtype))
        return y, gx, gp["kernel"][...]

    return step, params


def check_recipe(recipe: ops.Recipe | str) -> None:
    """A recipe's contract on a tiny ``QuantDense``: forward output and backward gradients finite
    with the right shapes, the kernel gradient not all zero, jit equals eager bit for bit, and
    two runs (same stochastic-rounding key) give the same bits."""
    recipe = ops.recipes.get(recipe)
    what = f"recipe {recipe.name or recipe!s}"
    x = jnp.asarray(np.random.default_rng(3).standard_normal((_TOKENS, _IN)), jnp.float32)
    key = jax.random.key(0) if recipe.needs_key() else None
    step, params = _dense_step(recipe, key)
    eager = [np.asarray(a) for a in step(params, x)]
    names = ("output", "input gradient", "kernel gradient")
    for name, shape, a in zip(names, ((_TOKENS, _OUT), x.shape, (_IN, _OUT)), eager):
        if a.shape != shape:
            _fail(what, f"the {name} has shape {shape}", f"got {a.shape}")
        _expect(np.isfinite(a.astype(np.float32)), what, f"the {name} is finite", got=a)
    if not np.any(eager[2] != 0):
        _fail(what, "the kernel gradient is not all zero")
    jitted = jax.jit(step)
    for run in (jitted(params, x), jitted(params, x), step(params, x)):
        for name, a, b in zip(names, run, eager):
            _expect(_same_bits(a, b), what, f"jit equals eager, and each repeats itself ({name})", got=a, want=b)
