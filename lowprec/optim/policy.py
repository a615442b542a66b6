"""A precision policy: which dtype parameters, computation and outputs use, and how the
optimizer keeps up (master copy, rounding, loss scaling), selected by one config string.

    policy = get_policy("bf16_master")          # or "param=bf16,compute=bf16,master=fp32"
    logits = model(policy.cast_to_compute(params), policy.cast_to_compute(x))
    tx = policy.optimizer(optax.adamw(1e-3))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from lowprec.formats import ROUNDING_MODES
from lowprec.optim import storage
from lowprec.optim.loss_scale import loss_scaling
from lowprec.optim.master import master_weights
from lowprec.registry import Registry

LOSS_SCALES = ("none", "static", "dynamic")
_CONVERT = {"init_scale": float, "growth_interval": int}
_KEYS = {"param": "param_dtype", "compute": "compute_dtype", "output": "output_dtype", "master": "master_dtype",
         "rounding": "rounding", "loss_scale": "loss_scale", "init_scale": "init_scale",
         "growth_interval": "growth_interval"}


@dataclasses.dataclass(frozen=True)
class Policy:
    """Precisions of one training run; a frozen, hashable value. Models read the dtypes
    (``cast_to_compute`` and friends); the trainer builds its optimizer with ``optimizer``.

    Fields: ``param_dtype`` (how the model stores parameters), ``compute_dtype`` (activations
    and GEMM inputs), ``output_dtype`` (what the model returns: logits, loss); each one of
    ``float32``, ``bfloat16``, ``float16`` (or ``fp32``, ``bf16``, ``fp16``).
    ``master_dtype``: the optimizer's master copy, or None for none; ``rounding``: how updated
    weights are rounded onto ``param_dtype`` (``stochastic`` needs a key);
    ``loss_scale``: ``none``, ``static`` (fixed at ``init_scale``) or ``dynamic`` (from
    ``init_scale``, grown after ``growth_interval`` finite steps).
    """

    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    output_dtype: str = "float32"
    master_dtype: str | None = None
    rounding: str = "nearest_even"
    loss_scale: str = "none"
    init_scale: float = 2.0 ** 15
    growth_interval: int = 2000

    def __post_init__(self):
        if isinstance(self.master_dtype, str) and self.master_dtype == "none":
            object.__setattr__(self, "master_dtype", None)
        for field in ("param_dtype", "compute_dtype", "output_dtype", "master_dtype"):
            value = getattr(self, field)
            if value is None and field == "master_dtype":
                continue
            dtype = storage.resolve(field, value)
            if not isinstance(dtype, jnp.dtype):
                raise ValueError(f"{field} must be a dtype ({', '.join(storage.STORAGE_DTYPES)}); got {value}")
            object.__setattr__(self, field, dtype.name)
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown rounding {self.rounding!r}; known: {', '.join(ROUNDING_MODES)}")
        if self.loss_scale not in LOSS_SCALES:
            raise ValueError(f"unknown loss_scale {self.loss_scale!r}; known: {', '.join(LOSS_SCALES)}")
        if self.param_dtype == "float32" and self.rounding != "nearest_even":
            raise ValueError(f"rounding={self.rounding!r} needs low-precision parameters; param_dtype is float32")
        if self.param_dtype == "float32" and self.master_dtype not in (None, "float32"):
            raise ValueError(f"master_dtype={self.master_dtype} is coarser than param_dtype=float32; "
                             "use float32 or none")

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """From ``"key=value,..."`` with keys param, compute, output, master, rounding,
        loss_scale, init_scale, growth_interval."""
        kwargs = {}
        for item in (i for i in spec.replace(" ", "").split(",") if i):
            key, sep, value = item.partition("=")
            if not sep or key not in _KEYS:
                raise ValueError(f"cannot parse policy item {item!r}; expected key=value with key one of "
                                 f"{', '.join(_KEYS)}")
            field = _KEYS[key]
            try:
                kwargs[field] = _CONVERT.get(field, str)(value)
            except ValueError:
                raise ValueError(f"policy {key}={value!r} must be a number") from None
        return cls(**kwargs)

    def cast_to_param(self, tree):
        return _cast_floats(tree, self.param_dtype)

    def cast_to_compute(self, tree):
        return _cast_floats(tree, self.compute_dtype)

    def cast_to_output(self, tree):
        return _cast_floats(tree, self.output_dtype)

    def optimizer(self, inner: optax.GradientTransformation, key=None) -> optax.GradientTransformationExtraArgs:
        """``inner`` wrapped as the policy says: :func:`master_weights` (or rounded updates with
        no master) for low-precision parameters, then :func:`loss_scaling` outermost."""
        tx = optax.with_extra_args_support(inner)
        if self.param_dtype != "float32":
            tx = master_weights(tx, self.param_dtype, self.master_dtype, self.rounding, key)
        if self.loss_scale != "none":
            tx = loss_scaling(tx, self.init_scale, dynamic=self.loss_scale == "dynamic",
                              growth_interval=self.growth_interval)
        return tx


def _check(name: str, policy: Policy) -> Policy:
    if not isinstance(policy, Policy):
        raise TypeError(f"register({name!r}, ...) needs a Policy; got {type(policy).__name__}")
    return policy


# Presets; ``"mixed_bf16(loss_scale=dynamic)"`` is one with Policy fields replaced.
POLICIES = Registry("policy", check=_check, derive=lambda p, kwargs: dataclasses.replace(p, **kwargs),
                    params=lambda p: [f.name for f in dataclasses.fields(Policy)], words=True)
for _name, _policy in {
    "fp32": Policy(),
    "mixed_bf16": Policy(compute_dtype="bfloat16"),
    "bf16_pure": Policy(param_dtype="bfloat16", compute_dtype="bfloat16"),
    "bf16_master": Policy(param_dtype="bfloat16", compute_dtype="bfloat16", master_dtype="float32"),
    "bf16_sr": Policy(param_dtype="bfloat16", compute_dtype="bfloat16", rounding="stochastic"),
    "mixed_fp16": Policy(compute_dtype="float16", loss_scale="dynamic"),
    "fp16_master": Policy(param_dtype="float16", compute_dtype="float16", master_dtype="float32",
                          loss_scale="dynamic"),
}.items():
    POLICIES.register(_name, _policy)
PRESETS = POLICIES._entries  # the registry's own dict: registering a policy adds a preset


def get_policy(spec: str | Policy) -> Policy:
    """A policy from a preset name (``PRESETS``), a preset with fields replaced
    (``"mixed_bf16(loss_scale='dynamic')"``), a ``"key=value,..."`` string, or a Policy."""
    if isinstance(spec, Policy):
        return spec
    if spec in PRESETS:
        return PRESETS[spec]
    if "=" in spec and "(" not in spec:
        return Policy.parse(spec)
    try:
        return POLICIES.get(spec)
    except ValueError as e:
        if str(e).startswith("unknown policy"):
            raise ValueError(f"{e}; or key=value,... with keys {', '.join(_KEYS)}") from None
        raise


def _cast_floats(tree, dtype: str):
    def cast(x):
        return jnp.asarray(x).astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(cast, tree)
