"""A float64 numpy reference for rounding onto float, integer and codebook grids, written
from REFERENCE.md §1's definitions (independent of lowprec), and the fp32 input sweeps.

Ties to even: the neighbour whose significand is even on the local quantum (lo / (hi - lo)
even; for a 0-mantissa format both candidates are 1.0 x 2^E and the tie goes up, as ml_dtypes
does for e8m0fnu); a codebook breaks ties by even index. Overflow is decided on the rounded
value; an overflowing result saturates, or under ``overflow="ieee"`` becomes inf (ieee
specials) / NaN (fn, fnuz) — except that a rounding toward zero never overflows a finite
input (IEEE 754 §7.4: it gives ±max).
"""

import numpy as np

N = 32768  # fixed input length: eager jax reuses its compiled kernels across formats


def float_magnitudes(e, m, bias, specials, subnormals) -> np.ndarray:
    """Non-negative finite values of a signed ExMy format, from the definition."""
    top = 2 ** e - 1
    vals = []
    for E in range(2 ** e):
        for M in range(2 ** m):
            if specials == "ieee" and E == top or specials == "fn" and E == top and M == 2 ** m - 1:
                continue  # inf / NaN codes
            if E == 0:
                if M and not subnormals:
                    continue
                vals.append(2.0 ** (1 - bias) * M / 2 ** m)
            else:
                vals.append(2.0 ** (E - bias) * (1 + M / 2 ** m))
    return np.unique(vals)


def _pick(x, lo, hi, mode, tie_lo):
    """Rounds x in [lo, hi] by ``mode``; ``tie_lo`` says where an exact tie goes."""
    mid = (lo + hi) / 2  # exact in float64 for the grids used here
    r = {
        "nearest_even": np.where(x < mid, lo, np.where(x > mid, hi, np.where(tie_lo, lo, hi))),
        "nearest_away": np.where(x < mid, lo, np.where(x > mid, hi, np.where(np.abs(lo) > np.abs(hi), lo, hi))),
        "toward_zero": np.where(np.abs(lo) < np.abs(hi), lo, hi),
        "down": lo, "up": hi,
    }[mode]
    return np.where(x == lo, lo, np.where(x == hi, hi, r))


def ref_float(x32, spec, mode, overflow):
    """float64 reference quantization of fp32 ``x32`` onto a signed float format."""
    specials, m = spec[3], spec[1]
    P = float_magnitudes(*spec)
    fmax = P[-1]
    virt = fmax + 2.0 ** (np.floor(np.log2(fmax)) - m)  # the unbounded grid's next value
    Pe = np.append(P, virt)
    x = x32.astype(np.float64)
    neg = np.signbit(x)
    a = np.abs(x)
    i = np.clip(np.searchsorted(Pe, a, side="right") - 1, 0, len(Pe) - 2)
    lo, hi = Pe[i], Pe[i + 1]  # beyond virt: lo = max, hi = virt
    if mode in ("nearest_even", "nearest_away"):
        r = _pick(a, lo, hi, mode, tie_lo=(lo / (hi - lo)) % 2 == 0)
    else:  # on magnitudes a directed rounding goes inward (toward zero) or outward
        inward = np.ones_like(neg) if mode == "toward_zero" else neg == (mode == "up")
        r = np.where(a == lo, lo, np.where(inward, lo, hi))
    over = (r > fmax) | np.isinf(a)  # decided on the rounded value; inward never overflows
    over_val = fmax
    if overflow == "ieee":
        over_val = {"ieee": np.inf, "fn": np.nan, "fnuz": np.nan, "none": fmax}[specials]
    r = np.where(over, over_val, r)
    out = np.where(neg, -r, r)
    if specials == "fnuz":
        out = np.where(out == 0, 0.0, out)  # no negative zero
    return np.where(np.isnan(x), np.nan, out)


def ref_grid(x32, grid, mode, tie_by_index):
    """float64 reference onto a sorted finite grid (integers, codebooks); saturating.

    Ties: even index (codebooks) or even lo / (hi - lo) (integers); ``nearest_away`` and
    ``toward_zero`` between neighbours of equal magnitude keep the sign of x.
    """
    x = np.clip(x32.astype(np.float64), grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    tie_lo = i % 2 == 0 if tie_by_index else (lo / (hi - lo)) % 2 == 0
    r = _pick(x, lo, hi, mode, tie_lo)
    if mode in ("nearest_away", "toward_zero"):  # lo == -hi: keep the sign of x
        undecided = (np.abs(lo) == np.abs(hi)) & (x != lo) & (x != hi)
        if mode == "nearest_away":
            undecided &= x == (lo + hi) / 2
        r = np.where(undecided, np.where(np.signbit(x32), lo, hi), r)
    return np.where(np.isnan(x32), np.nan, r + 0.0)


def int_grid(bits, signed, narrow_range, frac_bits):
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    lo = (-hi if narrow_range else -hi - 1) if signed else 0
    return np.arange(lo, hi + 1, dtype=np.float64) * 2.0 ** -frac_bits


def float_step(spec):
    """The local step 2**(max(floor(log2|x|), emin) - m) (2**emin below min normal without subnormals)."""
    m, bias, subnormals = spec[1], spec[2], spec[4]
    emin = 1 - bias

    def step(x):
        _, ex = np.frexp(np.abs(x))  # |x| = f * 2**ex with f in [0.5, 1): exact
        q = 2.0 ** (np.maximum(ex - 1, emin) - m)
        return q if subnormals else np.where(np.abs(x) < 2.0 ** emin, 2.0 ** emin, q)
    return step


def sweep(grid, top_step=None, seed=0) -> np.ndarray:
    """fp32 inputs: every value and midpoint (exact ties) with 2 fp32 neighbours each side,
    the overflow threshold, random values over the range, a few fp32 subnormals, ±0, ±inf, NaN;
    half of them the negation of the other half (for odd symmetry); length N."""
    g = np.unique(np.concatenate([grid, -grid]))
    ext = g if top_step is None else np.concatenate([[g[0] - top_step], g, [g[-1] + top_step]])
    mids = (ext[:-1] + ext[1:]) / 2
    with np.errstate(over="ignore"):  # beyond fp32: inf, an input like any other
        c = np.concatenate([ext, mids, 2 * ext[[0, -1]]]).astype(np.float32)
    pts = [c]
    lo, hi = c, c
    for _ in range(2):
        lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
        pts += [lo, hi]
    rng = np.random.default_rng(seed)
    big = np.abs(g).max()
    pts += [np.array([0, np.inf, np.nan, 1e-45, 2e-40, np.finfo(np.float32).max], np.float32)]
    x = np.concatenate(pts)
    half = N // 2
    assert x.size <= half, f"sweep of {x.size} points exceeds {half}"
    fill = half - x.size
    logs = rng.uniform(np.log2(big) - 40, np.log2(big) + 2, fill // 2)
    with np.errstate(over="ignore"):
        rand = np.concatenate([2.0 ** logs * rng.choice([-1, 1], fill // 2),
                               rng.uniform(-1.5 * big, 1.5 * big, fill - fill // 2)]).astype(np.float32)
    x = np.concatenate([x, rand])
    return np.concatenate([x, -x])
