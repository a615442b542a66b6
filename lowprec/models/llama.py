"""A LLaMA-style decoder in Flax NNX: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention.

Every linear layer is a ``QuantDense`` whose recipe is assigned by path rules; layers are
stacked (``nnx.vmap`` at init, ``nnx.scan`` in the forward pass) so that compile time does not
grow with depth. Rules may give layers recipes by index (``("blocks[-2:]", "bf16")``): the
forward pass then scans each run of consecutive layers with equal recipes separately. Parameters carry logical axis names (``embed``, ``mlp``, ``heads``,
``vocab``, ``layers``) that the trainer maps onto the device mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from lowprec.nn import QuantAttend, QuantDense, QuantModule

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 768
    max_seq_len: int = 256
    # The LM head is the embedding table (transposed; a QuantAttend layer named lm_head), its
    # logits scaled by d_model^-0.5: the table is initialized N(0, 1) for the lookup, and the
    # scale gives the head the untied head's N(0, 1/d_model) (as T5 does).
    tie_embeddings: bool = False
    scale_tied_logits: bool = True   # False: the tied head's logits unscaled (checkpoints made elsewhere)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    d_head: int = 0                  # width of a head; 0: d_model // n_heads
    dtype: str = "bfloat16"          # compute dtype of activations
    param_dtype: str = "float32"     # storage dtype of parameters
    remat: bool = False
    # Layers per iteration of the layer scan; 0: all of them (no loop). Inside a loop the stacked
    # residuals the backward pass reads are buffers XLA zero-fills and copies every step (17 GiB
    # per 1B bf16 step on an H100, 244 -> 202 ms without the loop); a loop compiles faster.
    scan_unroll: int = 0
    telemetry: bool = False          # quantized layers record numerics statistics
    attention: str | None = None     # jax.nn.dot_product_attention implementation: "xla", "cudnn",
                                     # or None: cudnn on GPU for bf16/fp16 activations, else xla (logged)

    def __post_init__(self):
        if self.d_head < 0:
            raise ValueError(f"d_head={self.d_head} must be positive, or 0 for d_model // n_heads")
        if not self.d_head and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.scan_unroll < 0:
            raise ValueError(f"scan_unroll={self.scan_unroll} must be >= 0 (0: every layer unrolled)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def num_params(self) -> int:
        d, f, v, hd = self.d_model, self.d_ff, self.vocab_size, self.head_dim
        attn = d * (self.n_heads + 2 * self.n_kv_heads) * hd + self.n_heads * hd * d
        per_layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * per_layer + d


# Sizes by name; parameter counts with the byte-level vocabulary: tiny 0.1M, 6m 6.0M, 20m 21.8M,
# 125m 121M, 350m 346M, 1b 993M (LlamaConfig.num_params).
SIZES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192, max_seq_len=128),
    "6m": dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, d_ff=1024, max_seq_len=512),
    "20m": dict(d_model=384, n_layers=10, n_heads=6, n_kv_heads=2, d_ff=1536, max_seq_len=512),
    "125m": dict(d_model=768, n_layers=14, n_heads=12, n_kv_heads=4, d_ff=3072, max_seq_len=1024),
    "350m": dict(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=4, d_ff=3840, max_seq_len=1024),
    "1b": dict(d_model=2048, n_layers=22, n_heads=16, n_kv_heads=4, d_ff=5632, max_seq_len=2048),
}


def config_for(size: str, **overrides) -> LlamaConfig:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    return LlamaConfig(**{**SIZES[size], **overrides})


def _dense(cfg, n_in, n_out, std, axes, rngs):
    return QuantDense(n_in, n_out, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                      kernel_init=nnx.initializers.normal(std), kernel_axes=axes, telemetry=cfg.telemetry,
                      rngs=rngs)


def _key(key, i):
    """The stochastic-rounding key of sub-layer ``i`` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, i)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("embed",), eager_sharding=False)
        self.eps = eps

    def __call__(self, x_BxLxD):
        return _rms_norm(x_BxLxD, self.scale[...], self.eps)


@functools.partial(jax.checkpoint, static_argnums=(2,))
def _rms_norm(x_BxLxD, scale_D, eps: float):
    """Recomputed in the backward pass from its input (saved anyway as the residual stream):
    autodiff would save f32 copies of the input and of the normalized values per layer."""
    x32 = x_BxLxD.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale_D.astype(jnp.float32)[None, None, :]).astype(x_BxLxD.dtype)


@jax.checkpoint
def _swiglu(gate_BxLxF, up_BxLxF):
    """silu(gate) * up, recomputed in the backward pass from gate and up: autodiff would save
    three more d_ff-wide tensors per layer (the sigmoid, silu(gate), the product)."""
    return jax.nn.silu(gate_BxLxF) * up_BxLxF


def rotary(x_BxLxHxK, theta: float):
    """Rotary position embedding on the last axis (pairs of halves)."""
    length, half = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1] // 2
    freq_K = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    angle_LxK = jnp.arange(length, dtype=jnp.float32)[:, None] * freq_K[None, :]
    sin, cos = jnp.sin(angle_LxK)[None, :, None, :], jnp.cos(angle_LxK)[None, :, None, :]
    x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


def attention_implementation(setting: str | None, dtype) -> str:
    """``setting`` when given; otherwise cudnn's fused attention on GPUs for 16-bit activations
    (about 2x faster than XLA's for the 20M model on an H100), XLA's elsewhere."""
    if setting:
        return setting
    fused = jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return _log_choice("cudnn" if fused else "xla", jnp.dtype(dtype).name)


@functools.cache
def _log_choice(implementation: str, dtype: str) -> str:
    log.info("attention: %s (model.attention unset; %s activations on %s)", implementation, dtype,
             jax.default_backend())
    return implementation


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        d, hd, std = cfg.d_model, cfg.head_dim, cfg.d_model ** -0.5
        self.q = _dense(cfg, d, cfg.n_heads * hd, std, ("embed", "heads"), rngs)
        self.k = _dense(cfg, d, cfg.n_kv_heads * hd, std, ("embed", "kv_heads"), rngs)
        self.v = _dense(cfg, d, cfg.n_kv_heads * hd, std, ("embed", "kv_heads"), rngs)
        out_std = (cfg.n_heads * hd) ** -0.5 / (2 * cfg.n_layers) ** 0.5
        self.o = _dense(cfg, cfg.n_heads * hd, d, out_std, ("heads", "embed"), rngs)
        self.cfg = cfg

    def __call__(self, x_BxLxD, key=None):
        cfg = self.cfg
        b, length, _ = x_BxLxD.shape
        q_BxLxHxK = self.q(x_BxLxD, key=_key(key, 0)).reshape(b, length, cfg.n_heads, cfg.head_dim)
        k_BxLxGxK = self.k(x_BxLxD, key=_key(key, 1)).reshape(b, length, cfg.n_kv_heads, cfg.head_dim)
        v_BxLxGxK = self.v(x_BxLxD, key=_key(key, 2)).reshape(b, length, cfg.n_kv_heads, cfg.head_dim)
        q_BxLxHxK, k_BxLxGxK = rotary(q_BxLxHxK, cfg.rope_theta), rotary(k_BxLxGxK, cfg.rope_theta)
        out_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, is_causal=True,
                                                   implementation=attention_implementation(cfg.attention,
                                                                                           q_BxLxHxK.dtype))
        return self.o(out_BxLxHxK.reshape(b, length, cfg.n_heads * cfg.head_dim), key=_key(key, 3))


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.gate = _dense(cfg, d, f, d ** -0.5, ("embed", "mlp"), rngs)
        self.up = _dense(cfg, d, f, d ** -0.5, ("embed", "mlp"), rngs)
        self.down = _dense(cfg, f, d, f ** -0.5 / (2 * cfg.n_layers) ** 0.5, ("mlp", "embed"), rngs)

    def __call__(self, x_BxLxD, key=None):
        h_BxLxF = _swiglu(self.gate(x_BxLxD, key=_key(key, 0)), self.up(x_BxLxD, key=_key(key, 1)))
        return self.down(h_BxLxF, key=_key(key, 2))


class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd, rngs)
        self.mlp = MLP(cfg, rngs)
        self.telemetry = cfg.telemetry

    def __call__(self, x_BxLxD, key=None):
        a_BxLxD = self.attn(self.attn_norm(x_BxLxD), key=_key(key, 0))
        x_BxLxD = x_BxLxD + a_BxLxD
        m_BxLxD = self.mlp(self.mlp_norm(x_BxLxD), key=_key(key, 1))
        if self.telemetry:  # where a non-finite value first appears
            self.sow(nnx.Intermediate, "finite", jnp.stack([jnp.all(jnp.isfinite(a_BxLxD)),
                                                             jnp.all(jnp.isfinite(m_BxLxD))]))
        return x_BxLxD + m_BxLxD


class Llama(nnx.Module):
    """Token ids (B, L) -> logits (B, L, vocab) in fp32."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype), param_dtype=pd,
                               embedding_init=nnx.initializers.normal(1.0), rngs=rngs,
                               embedding_metadata=dict(out_sharding=("vocab", "embed"), eager_sharding=False))

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r):
            return Block(cfg, r)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd, rngs)
        if cfg.tie_embeddings:  # the embedding table, transposed, through a recipe of its own
            self.lm_head = QuantAttend(dtype=jnp.dtype(cfg.dtype), telemetry=cfg.telemetry)
        else:
            self.lm_head = _dense(cfg, cfg.d_model, cfg.vocab_size, cfg.d_model ** -0.5, ("embed", "vocab"), rngs)

    def __call__(self, tokens_BxL, key=None):
        """``key``: PRNG key for stochastic-rounding recipes (folded per layer and GEMM)."""
        # The table is gathered in fp32, so its gradient is an fp32 scatter-add: on GPUs a 16-bit
        # scatter-add of repeated tokens (text) serializes, costing 2x the 20M model's step.
        table = self.embed.embedding[...]
        x_BxLxD = jnp.take(table.astype(jnp.float32), tokens_BxL, axis=0).astype(self.embed.dtype or table.dtype)
        layer_keys = None if key is None else jax.random.split(key, self.cfg.n_layers)

        def layer(block, x, k):
            return block(x, key=k)

        if self.cfg.remat:
            layer = nnx.remat(layer)

        @nnx.scan(in_axes=(0, nnx.Carry, 0 if key is not None else None), out_axes=nnx.Carry,
                   unroll=self.cfg.scan_unroll or self.cfg.n_layers)
        def run(block, x, k):
            return layer(block, x, k)

        segments = _recipe_segments(self.blocks, self.cfg.n_layers)
        if len(segments) == 1:
            x_BxLxD = run(self.blocks, x_BxLxD, layer_keys)
        else:  # per-layer recipes: one scan per run of layers with equal recipes
            graphdef, state = nnx.split(self.blocks)
            sown = []
            for a, b in segments:
                seg = nnx.merge(graphdef, jax.tree.map(lambda v: v[a:b], state))
                for _, m in nnx.iter_modules(seg):
                    if isinstance(m, QuantModule) and isinstance(m.recipe, tuple):
                        m.recipe = m.recipe[a]
                x_BxLxD = run(seg, x_BxLxD, None if layer_keys is None else layer_keys[a:b])
                sown.append(nnx.state(seg, nnx.Intermediate))
            if jax.tree.leaves(sown[0]):
                nnx.update(self.blocks, jax.tree.map(lambda *v: jnp.concatenate(v), *sown))
        x_BxLxD = self.final_norm(x_BxLxD)
        if self.cfg.tie_embeddings:
            logits = self.lm_head(x_BxLxD, table, key=_key(key, self.cfg.n_layers)).astype(jnp.float32)
            return logits * self.cfg.d_model ** -0.5 if self.cfg.scale_tied_logits else logits
        return self.lm_head(x_BxLxD, key=_key(key, self.cfg.n_layers)).astype(jnp.float32)


def _recipe_segments(blocks, n_layers: int) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive stacked layers whose quantized layers' recipes agree
    (one run, the whole stack, unless ``assign_recipes`` gave some layer its own recipes)."""
    per_layer = [m.recipe for _, m in nnx.iter_modules(blocks)
                 if isinstance(m, QuantModule) and isinstance(m.recipe, tuple)]
    if not per_layer:
        return [(0, n_layers)]
    starts = [0] + [i for i in range(1, n_layers) if any(r[i] != r[i - 1] for r in per_layer)]
    return list(zip(starts, starts[1:] + [n_layers]))


def cross_entropy(logits_BxLxV, targets_BxL, reduce: bool = True):
    """Next-token cross entropy in nats (fp32): the mean, or per sequence (B,)."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    nll_BxL = -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]
    per_seq_B = jnp.mean(nll_BxL, axis=-1)
    return jnp.mean(per_seq_B) if reduce else per_seq_B
