"""config.execution: checked before start-up, applied to every quantized layer, logged once,
free to change on resume (the same bits, computed another way)."""

import logging
import types

import numpy as np
import pytest
from flax import nnx

from configs import lm
from lowprec.nn import QuantModule
from lowprec.ops import Execution
from lowprec.train import build, config_check, schema


def _cfg(**overrides):
    cfg = lm.get_config("smoke")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_a_bad_execution_is_a_one_line_config_error():
    bad = r"^execution: unknown Execution\.native_fp8 'yes'; known: auto, off, on$"
    with pytest.raises(schema.ConfigError, match=bad):
        config_check.check(_cfg(execution="native_fp8=yes"), 1)
    with pytest.raises(schema.ConfigError, match=r"^execution: unknown Execution field 'kernels'"):
        config_check.check(_cfg(execution="kernels=xla"), 1)


def test_the_run_execution_reaches_every_layer_and_is_logged(caplog):
    build._logged.clear()
    with caplog.at_level(logging.INFO, logger="lowprec.train.build"):
        _, _, model = build.make_model(_cfg(execution="native_fp8=off,block_amax=slices"))
        build.make_model(_cfg(execution="native_fp8=off,block_amax=slices"))
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, QuantModule)]
    assert layers and all(m.execution == Execution(native_fp8="off", block_amax="slices") for m in layers)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("execution: ")]
    assert logged == ["execution: native_fp8=off, fp8_transposes=auto, kernel=auto, block_amax=slices"]
    _, _, plain = build.make_model(_cfg())
    assert all(m.execution is None for _, m in nnx.iter_modules(plain) if isinstance(m, QuantModule))


def test_pallas_transposes_are_refused_on_a_mesh_of_several_devices():
    mesh = types.SimpleNamespace(devices=np.empty(8))
    with pytest.raises(schema.ConfigError, match="has fp8_transposes='pallas', whose cast-transpose kernel is not "
                                                 "partitioned across the mesh's 8 devices"):
        build.check_kernels_fit(_cfg(execution="fp8_transposes=pallas"), mesh)
    build.check_kernels_fit(_cfg(recipe="fp8_pallas", execution="fp8_transposes=fused"), mesh)  # the run's choice wins


def test_a_resumed_run_may_change_its_execution():
    old, new = _cfg().to_dict(), _cfg(execution="fp8_transposes=separate").to_dict()
    assert config_check.changes(old, new) == {}


def test_the_telemetry_twin_runs_under_the_run_execution():
    from lowprec.train.telemetry import flatten, make_telemetry_fn

    cfg = _cfg(recipe="fp8", execution="native_fp8=off,fp8_transposes=separate")
    mcfg, _, model = build.make_model(cfg)
    params = nnx.state(model, nnx.Param)
    tokens = np.zeros((1, 9), np.int32)
    plain = flatten(*make_telemetry_fn(mcfg, build.recipe_rules(cfg), cfg.seed)(params, tokens))
    chosen = flatten(*make_telemetry_fn(mcfg, build.recipe_rules(cfg), cfg.seed, build.execution(cfg))(params, tokens))
    assert any("/fwd_act/" in k for k in plain) and plain == chosen  # the same bits: equal floats
