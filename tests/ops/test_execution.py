"""lp.ops.Execution: the same-bits implementation choices of a run, apart from the Recipe.

Changing the execution never changes bits where the docs say it does not: ``fp8_transposes``
(fused, separate, pallas; on CPU XLA keeps no excess precision here), ``native_fp8`` on CPU
(simulated either way: no FP8 units), ``kernel`` (xla, pallas) and ``block_amax`` (reduce,
slices). Forward outputs and gradients of a small QuantDense (and of a block quantizer's
``q(x)``, where ``kernel`` applies) are compared bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lowprec as lp
from lowprec.ops import Execution
from lowprec.quant import execution as execution_lib

FP8_EXECUTIONS = ["fp8_transposes=fused", "fp8_transposes=separate", "fp8_transposes=pallas",
                  "native_fp8=off", "native_fp8=on", "native_fp8=on,fp8_transposes=pallas"]
BLOCK_EXECUTIONS = ["kernel=xla", "kernel=pallas", "block_amax=slices", "kernel=xla,block_amax=slices",
                    "kernel=pallas,block_amax=slices"]


@pytest.mark.parametrize("field", list(execution_lib.CHOICES))
def test_an_unknown_value_names_the_field_and_what_is_allowed(field):
    allowed = ", ".join(execution_lib.CHOICES[field])
    with pytest.raises(ValueError, match=rf"^unknown Execution\.{field} 'bogus'; known: {allowed}$"):
        Execution(**{field: "bogus"})
    with pytest.raises(ValueError, match=rf"^unknown Execution\.{field} 'bogus'"):
        Execution.parse(f"{field}=bogus")


def test_parse_errors_are_one_line():
    with pytest.raises(ValueError, match=r"^unknown Execution field 'kernels'; known: native_fp8, fp8_transposes"):
        Execution.parse("kernels=xla")
    with pytest.raises(ValueError, match=r"^execution entry 'pallas' is not field=value"):
        Execution.parse("pallas")
    with pytest.raises(TypeError, match=r"^execution must be a string"):
        Execution.parse(3)


def test_parse_reads_strings_dicts_and_its_own_str():
    e = Execution.parse(" native_fp8=off, fp8_transposes='separate' ,kernel=xla")
    assert e == Execution(native_fp8="off", fp8_transposes="separate", kernel="xla")
    assert Execution.parse(str(e)) == e == Execution.parse({"native_fp8": "off", "fp8_transposes": "separate",
                                                            "kernel": "xla"})
    assert Execution.parse("") == Execution.parse(None) == Execution() and str(Execution()) == ""
    assert e.describe() == "native_fp8=off, fp8_transposes=separate, kernel=xla, block_amax=reduce"
    assert lp.quant.Execution is Execution


def test_with_execution_sets_the_recipe_and_every_quantizer_and_keeps_the_numbers():
    r = lp.recipes.get("mxfp4")
    e = Execution(native_fp8="off", fp8_transposes="separate", kernel="xla", block_amax="slices")
    out = r.with_execution(e)
    assert (out.native_fp8, out.fp8_transposes, out.name) == ("off", "separate", "mxfp4")
    assert all((out.quantizer(role).kernel, out.quantizer(role).block_amax) == ("xla", "slices")
               for role in lp.ops.ROLES)
    assert out.with_execution(Execution()).execution() == Execution() and out.execution() == e
    assert out.with_execution(Execution()) == r and r.with_execution(None) is r
    dq = lp.Quantizer("nf4", "block(64)", double_quant=lp.Quantizer("int8", "block(256)"))
    assert e.apply_quantizer(dq).double_quant.block_amax == "slices"


def _values_and_grads(recipe, execution, shape, seed=0):
    """A QuantDense's output and its gradients (input, kernel) under ``execution``."""
    n_in, n_out = shape
    layer = lp.nn.QuantDense(n_in, n_out, recipe=recipe, rngs=nnx.Rngs(seed))
    lp.nn.assign_execution(layer, execution)
    x = jax.random.normal(jax.random.key(seed + 1), (64, n_in), jnp.float32) * 3

    def loss(layer, x):
        return jnp.sum(jnp.sin(layer(x)))

    y = layer(x)
    gl, gx = nnx.grad(loss, argnums=(0, 1))(layer, x)
    return [np.asarray(a) for a in (y, gx, gl.kernel[...])]


def _assert_same_bits(a, b, what, names=("output", "input gradient", "kernel gradient")):
    for name, u, v in zip(names, a, b, strict=True):
        u, v = np.atleast_1d(u), np.atleast_1d(v)
        assert u.dtype == v.dtype and np.array_equal(u.view(np.uint8), v.view(np.uint8)), f"{what}: {name} differs"


@pytest.mark.parametrize("execution", FP8_EXECUTIONS)
def test_fp8_executions_give_the_same_bits(execution):
    base = _values_and_grads("fp8", None, (128, 64))
    assert np.abs(base[0]).max() > 0 and np.abs(base[2]).max() > 0
    _assert_same_bits(base, _values_and_grads("fp8", execution, (128, 64)), execution)


@pytest.mark.parametrize("execution", BLOCK_EXECUTIONS)
def test_block_executions_give_the_same_bits(execution):
    base = _values_and_grads("mxfp4", None, (64, 32))
    assert np.abs(base[0]).max() > 0
    _assert_same_bits(base, _values_and_grads("mxfp4", execution, (64, 32)), execution)


@pytest.mark.parametrize("execution", BLOCK_EXECUTIONS)
def test_a_block_quantizer_gives_the_same_bits_under_each_execution(execution):
    """``q(x)`` (fake quantization, where ``kernel`` applies; GEMM operands are always XLA's) and its gradient."""
    q = lp.quant.presets.MXFP4
    x = jax.random.normal(jax.random.key(3), (16, 64), jnp.float32) * 2

    def run(q):
        return [np.asarray(a) for a in jax.value_and_grad(lambda x: jnp.sum(jnp.sin(q(x))))(x)] + [np.asarray(q(x))]

    _assert_same_bits(run(q), run(Execution.parse(execution).apply_quantizer(q)), execution,
                      ("loss", "gradient", "q(x)"))


def test_the_execution_chooses_the_path_that_runs():
    q, x = lp.quant.presets.MXFP4, jnp.ones((16, 64), jnp.float32)
    assert Execution(kernel="pallas").apply_quantizer(q).kernel_path(x)[0] == "pallas"
    assert Execution(kernel="xla").apply_quantizer(q).kernel_path(x) == ("xla", "kernel='xla'")
    with pytest.raises(ValueError, match="kernel='pallas' cannot quantize"):
        Execution(kernel="pallas").apply_quantizer(q)(jnp.ones((16, 48), jnp.float32))


@pytest.mark.parametrize("spec, execution", [("fp8(fp8_transposes='separate')", "fp8_transposes=separate"),
                                             ("fp8_pallas", "fp8_transposes=pallas"),
                                             ("fp8(native_fp8='off')", "native_fp8=off")])
def test_old_recipe_strings_with_execution_fields_still_parse_and_give_the_same_numbers(spec, execution):
    old = lp.recipes.get(spec)
    assert old.execution() == Execution.parse(execution)
    assert old == lp.recipes.get("fp8").with_execution(execution).replace(name=old.name)
    _assert_same_bits(_values_and_grads(spec, None, (128, 64)), _values_and_grads("fp8", execution, (128, 64)), spec)


def test_assign_execution_reaches_every_quantized_layer_and_einsum():
    model = nnx.Sequential(lp.nn.QuantDense(8, 8, recipe="fp8", rngs=nnx.Rngs(0)),
                           lp.nn.QuantEinsum("bd,df->bf", (8, 8), recipe="fp8", rngs=nnx.Rngs(1)))
    assert all(m.execution is None for m in model.layers)
    chosen = lp.nn.assign_execution(model, "native_fp8=off")
    assert chosen == Execution(native_fp8="off") and all(m.execution == chosen for m in model.layers)
    assert model(jnp.ones((2, 8))).shape == (2, 8)
    assert lp.nn.assign_execution(model, None) is None and all(m.execution is None for m in model.layers)


def test_recorded_recipe_json_with_execution_fields_still_decodes_to_them():
    """A run directory's recipe definition (ops.recipe_json) written with the fields on the Recipe."""
    import json

    from lowprec.ops import recipe_json

    e = Execution(native_fp8="off", fp8_transposes="separate", kernel="xla", block_amax="slices")
    old = lp.recipes.get("mxfp8").with_execution(e)
    back = recipe_json.decode(json.loads(json.dumps(recipe_json.encode(old))))
    assert back == old and back.execution() == e
    assert back.with_execution(Execution()) == lp.recipes.get("mxfp8")
