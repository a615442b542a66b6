"""Kernel attribution of profiles: GEMM library kernels by name, XLA fusions by their HLO."""

import gzip
import json
import pathlib

import jax
import jax.numpy as jnp
import optax

from experiments.common import CATEGORIES, hlo_copies, hlo_instructions, kernel_categories, kernel_category
from lowprec.train.step import TrainState, make_train_step

BENCH = pathlib.Path(__file__).parents[2] / "experiments" / "results" / "benchmarks"


def test_a_real_h200_profile_is_attributed_from_its_hlo():
    hlo_text = gzip.open(BENCH / "profile_8192_fp8_h200.hlo.txt.gz", "rt").read()
    hlo = hlo_instructions(hlo_text)
    kernels = next(r for r in json.loads((BENCH / "profile_8192_h200.json").read_text())["results"]
                   if r["recipe"] == "fp8")["kernels"]
    cats = kernel_categories(kernels, hlo_text)
    assert set(cats) == set(CATEGORIES)
    assert abs(sum(cats.values()) - sum(kernels.values())) < 1e-12  # every kernel counted once
    fp8_gemms = [k for k in kernels if k.startswith("nvjet")]
    assert len(fp8_gemms) == 3 and all(kernel_category(k, hlo) == "gemm fp8" for k in fp8_gemms)
    assert abs(cats["gemm fp8"] - sum(kernels[k] for k in fp8_gemms)) < 1e-12
    # the amax reductions live in the quantized GEMM's custom_vjp
    assert kernel_category("input_reduce_fusion_2", hlo) == "quantization"
    assert hlo["input_reduce_fusion_2"][1].endswith("_qdot)))/reduce_max")
    assert cats["quantization"] > 0 and cats["other"] < cats["quantization"]


def test_names_without_hlo_fall_back_to_the_kernel_name():
    assert kernel_category("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NTT", {}) == "gemm"
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", {}) == "attention"
    assert kernel_category("loop_add_fusion", {}) == "other"
    assert kernel_category("loop_add_fusion", {"loop_add_fusion": ("f32", "jit(step)/optimizer/add")}) == "optimizer"
    assert kernel_category("loop_convert_fusion", {"loop_convert_fusion": ("f8e5m2", "")}) == "quantization"


def test_the_train_step_names_its_optimizer_scope():
    def loss_fn(params, tokens, step, frozen=None, amax=None):
        return tokens[:, 1:].astype(jnp.float32) @ params["w"]

    tx = optax.adamw(1e-3)
    params = {"w": jnp.ones((4,), jnp.float32)}
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step = jax.jit(make_train_step(loss_fn, tx, 1, False))
    hlo = hlo_instructions(step.lower(state, jnp.ones((2, 5), jnp.int32)).compile().as_text())
    assert any("/optimizer/" in op for _, op in hlo.values())
    assert any(op and "/optimizer/" not in op for _, op in hlo.values())


def test_hlo_copies_are_listed_largest_first_with_their_bytes():
    hlo = """
  %wrapped_broadcast.3 = bf16[22,12,1024,5632]{3,2,1,0} fusion(%c), kind=kLoop
  %copy.7 = f32[4,8]{1,0} copy(%param.1), metadata={op_name="x"}
  ROOT %copy.9 = bf16[22,12,1024,5632]{3,2,1,0} copy(%wrapped_broadcast.3)
  %add.1 = f32[4,8]{1,0} add(%copy.7, %copy.7)
"""
    rows = hlo_copies(hlo)
    assert [r["name"] for r in rows] == ["copy.9", "copy.7"]
    assert rows[0] == {"name": "copy.9", "shape": "bf16[22,12,1024,5632]", "bytes": 2 * 22 * 12 * 1024 * 5632,
                       "operand": "wrapped_broadcast.3"}
    assert rows[1]["bytes"] == 4 * 4 * 8 and rows[1]["operand"] == "param.1"
