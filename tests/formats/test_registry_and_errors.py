"""Names, config strings, user registration, errors that name the field, and bit packing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowprec as lp
from lowprec.formats import Codebook, FloatFormat, IntFormat, registry

# Every built-in name the foundation issue lists, with its kind and REFERENCE.md's max and bits.
BUILTINS = {
    "fp32": (FloatFormat, float(np.finfo(np.float32).max), 32), "bf16": (FloatFormat, 3.3895313892515355e38, 16),
    "fp16": (FloatFormat, 65504, 16), "e5m2": (FloatFormat, 57344, 8), "e4m3fn": (FloatFormat, 448, 8),
    "e4m3fnuz": (FloatFormat, 240, 8), "e3m2fn": (FloatFormat, 28, 6), "e2m3fn": (FloatFormat, 7.5, 6),
    "e2m1fn": (FloatFormat, 6, 4), "e1m2": (FloatFormat, 3.5, 4), "e3m0": (FloatFormat, 16, 4),
    "e8m0fnu": (FloatFormat, 2.0 ** 127, 8), "int8": (IntFormat, 127, 8), "int4": (IntFormat, 7, 4),
    "int2": (IntFormat, 1, 2), "nf4": (Codebook, 1.0, 4), "lut4_primer": (Codebook, 1.0, 4),
}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations inside a test do not leak into others."""
    monkeypatch.setattr(registry.FORMATS, "_entries", dict(registry.FORMATS._entries))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_names_resolve(name):
    kind, fmax, bits = BUILTINS[name]
    fmt = lp.formats.get(name)
    assert isinstance(fmt, kind)
    assert (fmt.max, fmt.bits) == (fmax, bits)
    assert fmt.name == name and name in lp.formats.names()
    assert lp.formats.get(fmt) is fmt
    assert hash(fmt) == hash(lp.formats.get(name))


def test_constructor_strings_parse():
    assert lp.formats.get("fp(e=3,m=2)") == FloatFormat(3, 2) == lp.formats.get("e3m2fn")
    assert lp.formats.get(" fp(e=4, m=3, specials=fn) ") == lp.formats.get("e4m3fn")
    assert lp.formats.get("fp(e=4,m=3,bias=11,specials=fnuz)") == lp.formats.get("e4m3b11fnuz")
    assert lp.formats.get("fp(e=2,m=1,subnormals=false)") == FloatFormat(2, 1, subnormals=False)
    five = lp.formats.get("int(bits=5)")
    assert five == IntFormat(5) and five.max == 15 and five.min == -15
    assert lp.formats.get("int(bits=4,narrow_range=False)").min == -8
    assert lp.formats.get("codebook(-1,0,0.5,1)") == Codebook([-1, 0, 0.5, 1])
    for fmt in (FloatFormat(3, 1, bias=2, specials="fn"), IntFormat(6, signed=False), Codebook([-2, 1, 3])):
        assert lp.formats.get(fmt.name) == fmt  # an unregistered format's name is its constructor


def test_register(scratch_registry):
    mine = FloatFormat(2, 2)
    assert lp.formats.register("my_fp5", mine) is mine
    assert lp.formats.get("my_fp5") is mine and "my_fp5" in lp.formats.names()
    lp.formats.register("my_fp5", FloatFormat(2, 2))  # the same format again: fine
    with pytest.raises(ValueError, match="already registered"):
        lp.formats.register("my_fp5", FloatFormat(3, 1))
    with pytest.raises(ValueError, match="already registered"):
        lp.formats.register("e4m3fn", FloatFormat(4, 3))  # built-ins are protected too
    other = FloatFormat(3, 1)
    lp.formats.register("my_fp5", other, overwrite=True)
    assert lp.formats.get("my_fp5") is other
    with pytest.raises(ValueError, match="identifier"):
        lp.formats.register("not a name", mine)
    with pytest.raises(TypeError, match="Format"):
        lp.formats.register("x", "e4m3fn")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        lp.formats.get("e2m2")
    msg = str(err.value)
    assert "'e2m2'" in msg
    for name in lp.formats.names():
        assert name in msg
    with pytest.raises(TypeError):
        lp.formats.get(3)


@pytest.mark.parametrize("make,field", [
    (lambda: FloatFormat(-1, 2), "exp_bits"),
    (lambda: FloatFormat(9, 2), "exp_bits"),
    (lambda: FloatFormat(2.5, 2), "exp_bits"),
    (lambda: FloatFormat(4, 24), "man_bits"),
    (lambda: FloatFormat(4, -1), "man_bits"),
    (lambda: FloatFormat(5, 2, bias=-120), "bias"),  # max 2**151 exceeds fp32
    (lambda: FloatFormat(4, 3, bias=200), "bias"),  # smallest step below fp32's 2**-149
    (lambda: FloatFormat(4, 3, specials="weird"), "specials"),
    (lambda: FloatFormat(4, 3, specials="fnuz", signed=False), "signed"),
    (lambda: FloatFormat(1, 2, specials="ieee"), "exp_bits"),
    (lambda: IntFormat(-3), "bits"),
    (lambda: IntFormat(25), "bits"),
    (lambda: IntFormat(8, frac_bits=30), "frac_bits"),
    (lambda: lp.formats.get("fp(e=9,m=2)"), "exp_bits"),
    (lambda: lp.formats.get("fp(e=3)"), "m="),
    (lambda: lp.formats.get("fp(e=3,m=2,foo=1)"), "foo"),
    (lambda: Codebook([1.0, 0.0]), "increasing"),
    (lambda: Codebook([0.0, 0.0, 1.0]), "increasing"),
    (lambda: Codebook([1.0]), "values"),
    (lambda: Codebook([0.0, np.inf]), "finite"),
])
def test_impossible_formats_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_rounding_and_overflow_errors():
    fmt = lp.formats.get("e4m3fn")
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="key"):
        fmt.quantize(x, "stochastic")
    with pytest.raises(ValueError, match="key"):
        lp.Quantizer("e4m3fn", rounding="stochastic")(x)
    with pytest.raises(ValueError) as err:
        fmt.quantize(x, "round")
    for mode in lp.formats.ROUNDING_MODES:
        assert mode in str(err.value)
    with pytest.raises(ValueError, match="saturate"):
        fmt.quantize(x, overflow="wrap")
    with pytest.raises(ValueError, match="nearest_even"):
        lp.Quantizer("e4m3fn", rounding="round")
    with pytest.raises(TypeError, match="floating"):
        fmt.quantize(jnp.ones(3, jnp.int32))


# ---------------------------------------------------------------- packing
_pack = jax.jit(lp.formats.pack, static_argnums=1)
_unpack = jax.jit(lp.formats.unpack, static_argnums=(1, 2))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_round_trips_densely(bits):
    """Odd lengths, 1-D to 3-D: ceil(n * bits / 8) bytes per row, and back exactly."""
    rng = np.random.default_rng(bits)
    for shape in [(1,), (13,), (3, 5), (2, 3, 11)]:
        codes = rng.integers(0, 2 ** bits, shape, dtype=np.uint8)
        packed = np.asarray(_pack(codes, bits))
        assert packed.dtype == np.uint8
        assert packed.shape == shape[:-1] + (math.ceil(shape[-1] * bits / 8),)
        np.testing.assert_array_equal(np.asarray(_unpack(packed, bits, shape[-1])), codes)


def test_pack_bit_order():
    """Little-endian: the first code fills the lowest bits of the first byte."""
    np.testing.assert_array_equal(lp.formats.pack(np.array([0x1, 0x2, 0xF]), 4), [0x21, 0x0F])
    # 3-bit codes 1, 2, 3 -> bit stream 100 010 110 (LSB first) -> bytes 0b11010001, 0b0
    np.testing.assert_array_equal(lp.formats.pack(np.array([1, 2, 3]), 3), [0b11010001, 0])
    np.testing.assert_array_equal(lp.formats.pack(np.array([1, 0, 1, 1, 0, 0, 0, 1, 1]), 1), [0b10001101, 1])


def test_pack_errors():
    with pytest.raises(ValueError, match="bits"):
        lp.formats.pack(np.zeros(4, np.uint8), 9)
    with pytest.raises(ValueError, match="bits"):
        lp.formats.unpack(np.zeros(4, np.uint8), 0, 4)
    with pytest.raises(ValueError, match="asked for 9"):
        lp.formats.unpack(np.zeros(4, np.uint8), 4, 9)


def test_codes_of_a_quantized_tensor_pack_and_decode_back():
    fmt = lp.formats.get("e2m1fn")
    x = jax.random.normal(jax.random.key(0), (4, 9)) * 3

    @jax.jit
    def run(x):
        back = lp.formats.unpack(lp.formats.pack(fmt.encode(x), fmt.bits), fmt.bits, 9)
        return fmt.decode(back), fmt.quantize(x)
    decoded, quantized = run(x)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(quantized))
