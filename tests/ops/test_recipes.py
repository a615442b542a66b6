"""Named recipes, the FP4 paper's family, and Recipe's validation and one-line printing."""

import re

import pytest

import lowprec as lp
from lowprec.ops import ROLES, Recipe, recipes

NAMED = ("none", "bf16", "fp8", "fp4_paper", "w4a4", "w4a8", "w8a4", "mxfp8", "mxfp4", "nvfp4")


def test_every_named_recipe_is_registered_and_prints_as_one_line():
    for name in NAMED:
        recipe = recipes.get(name)
        assert recipe is getattr(recipes, name) and recipe.name == name
        text = str(recipe)
        assert "\n" not in text and text.startswith(f"Recipe {name}:")


def test_unknown_recipe_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown recipe 'fp7'; known: .*bf16.*fp4_paper.*fp8"):
        recipes.get("fp7")


def test_fp8_is_e4m3_forward_e5m2_gradients_per_tensor():
    r = recipes.fp8
    assert (r.fwd_act.format.name, r.fwd_weight.format.name) == ("e4m3fn", "e4m3fn")
    assert (r.dgrad_grad.format.name, r.wgrad_grad.format.name) == ("e5m2", "e5m2")
    assert {str(r.quantizer(role).granularity) for role in ROLES} == {"tensor"}
    assert r.compute_dtype == "bfloat16" and r.reuse_forward


def test_fp4_paper_matches_the_paper():
    r = recipes.fp4_paper
    assert r.fwd_weight.format.name == "e2m1fn" and str(r.fwd_weight.granularity) == "channel"
    assert r.fwd_weight.estimator == lp.quant.dge(k=5)
    assert r.fwd_act.format.name == "e2m1fn" and str(r.fwd_act.granularity) == "token"
    assert r.fwd_act.occ.alpha == 0.99 and r.fwd_act.occ.compensate
    assert r.dgrad_grad.format.name == "e5m2" and str(r.dgrad_grad.granularity) == "tensor"
    assert r.reuse_forward and r.quantizer("dgrad_weight") is r.fwd_weight


def test_ablation_factory_switches():
    assert recipes.w4a4.fwd_act.occ is None and recipes.w4a4.fwd_weight.estimator.name == "ste"
    assert recipes.w4a8.fwd_act.format.name == "e4m3fn" and recipes.w8a4.fwd_weight.format.name == "e4m3fn"
    r = recipes.fp4(4, 8, dge_k=3, weight_granularity="tensor", name="w4a8_dge3")
    assert r.fwd_weight.estimator == lp.quant.dge(k=3) and str(r.fwd_weight.granularity) == "tensor"
    r = recipes.fp4(8, 4, occ_alpha=0.97, compensate=False, quantile="approx")
    assert r.name == "w8a4+occ(0.97)" and not r.fwd_act.occ.compensate and r.fwd_act.occ.quantile == "approx"
    with pytest.raises(ValueError, match="act_bits must be 4 .* or 8 .*; got 6"):
        recipes.fp4(4, 6)
    r = recipes.get("fp4(dge_k=5, occ_alpha=0.99, act_element='e1m2', dge_mean_one=True)")
    assert (r.fwd_act.format.name, r.fwd_weight.format.name) == ("e1m2", "e2m1fn")
    assert r.fwd_weight.estimator == lp.quant.dge(k=5, mean_one=True) != lp.quant.dge(k=5)
    assert recipes.fp4(8, 4, act_element="e1m2").fwd_weight.format.name == "e4m3fn"


def test_block_recipes_requantize_every_gemm():
    for name, fmt in (("mxfp8", "e4m3fn"), ("mxfp4", "e2m1fn"), ("nvfp4", "e2m1fn")):
        r = recipes.get(name)
        assert not r.reuse_forward
        assert {r.quantizer(role).format.name for role in ROLES} == {fmt}
        assert {r.quantizer(role).granularity.kind for role in ROLES} == {"block"}


def test_register_a_custom_recipe():
    mine = recipes.register("test_int8", Recipe(fwd_weight=lp.Quantizer("int8", "channel")))
    assert recipes.get("test_int8") is mine and "test_int8" in recipes.names()
    with pytest.raises(ValueError, match="already registered"):
        recipes.register("test_int8", Recipe())


@pytest.mark.parametrize("kwargs,match", [
    (dict(reuse_forward=True, dgrad_weight=lp.Quantizer("e4m3fn")), "dgrad_weight must be None with reuse_forward"),
    (dict(compensation="sparse"), "unknown Recipe.compensation 'sparse'; known: separate, fused"),
    (dict(native_fp8="yes"), "unknown Recipe.native_fp8 'yes'; known: auto, off, on"),
    (dict(fwd_act="e4m3fn"), "Recipe.fwd_act must be a Quantizer or None"),
    (dict(compute_dtype="fp9"), "Recipe.compute_dtype: 'fp9' is not a dtype"),
    (dict(fwd_weight=lp.Quantizer("e4m3fn", "channel", source="delayed")),
     "fwd_weight: source='delayed' needs granularity='tensor'"),
    (dict(wgrad_act=recipes.fp4_paper.fwd_act), "wgrad_act: OCC applies to the forward activation only"),
])
def test_recipe_errors_name_the_field_and_allowed_values(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Recipe(**kwargs)


def test_recipe_spec_strings_build_factory_recipes():
    r = recipes.get("fp4(act_bits=8, dge_k=3)")
    assert r == recipes.fp4(4, 8, dge_k=3) and r.name == "fp4(act_bits=8, dge_k=3)"
    assert str(r).startswith("Recipe fp4(act_bits=8, dge_k=3):")
    e1m2 = recipes.get('fp4(dge_k=5, occ_alpha=0.99, element="e1m2")')
    assert e1m2.fwd_act.format == lp.formats.get("e1m2") and e1m2.fwd_weight.format == lp.formats.get("e1m2")
    assert e1m2.fwd_act.occ.alpha == 0.99 and e1m2.dgrad_grad.format == lp.formats.get("e5m2")


def test_a_named_recipe_with_fields_replaced():
    r = recipes.get("fp8_delayed(fp8_transposes='pallas', amax_history_len=4)")
    assert r == recipes.fp8_delayed.replace(fp8_transposes="pallas", amax_history_len=4)
    assert r.name == "fp8_delayed(fp8_transposes='pallas', amax_history_len=4)"
    assert recipes.fp8_delayed.amax_history_len == 16


@pytest.mark.parametrize("spec, words", [("fp4(4)", "keyword=literal"), ("fp4(bogus=1)", "bogus"),
                                         ("fp4(dge_k=x)", "keyword=literal"), ("nope", "fp4(...)"),
                                         ("fp8(transposes=1)", "unknown argument 'transposes'; known: fwd_act"),
                                         ("fp8(fp8_transposes='eager')", "known: auto, fused, separate, pallas")])
def test_bad_recipe_specs_name_the_problem(spec, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        recipes.get(spec)
