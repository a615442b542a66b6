"""End to end: the smoke config trains, resumes bit-identically, shards, and rejects bad configs."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import lm
from lowprec.train import loop
from lowprec.train.rundir import RunDir, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def configure(cfg, overrides: dict):
    """``cfg`` with ``{"a.b": value}`` set in place (returned for chaining)."""
    for path, value in overrides.items():
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def train_smoke(path: str, steps: int) -> str:
    """A smoke model trained for ``steps`` steps in ``path`` (synthetic data, one device)."""
    loop.train(configure(lm.get_config("smoke"), {
        "train.steps": steps, "train.log_every": steps // 3, "train.eval_every": steps, "train.eval_batches": 1,
        "train.progress": False, "mesh.devices": 1}), path)
    return path


def smoke(**overrides):
    cfg = lm.get_config("smoke")
    cfg.train.progress = False
    return configure(cfg, overrides)


def losses(workdir, split="train"):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def test_smoke_trains_and_writes_run_dir(tmp_path):
    out = loop.train(smoke(), str(tmp_path))
    train = losses(tmp_path)
    assert train[-1][1] < 0.5 * train[0][1], train  # from ~ln(256) toward the ln(4) floor
    assert out["val_loss"] < 2.0 and out["val_bits_per_byte"] == pytest.approx(out["val_loss"] / np.log(2))
    assert RunDir(str(tmp_path)).status() == ("done", "")
    assert json.load(open(tmp_path / "config.json"))["recipe"] == "bf16"
    assert (tmp_path / "log.txt").stat().st_size > 0 and (tmp_path / "checkpoints").is_dir()


def test_resume_is_bit_identical(tmp_path):
    cfg = smoke(**{"train.steps": 12, "train.log_every": 2, "train.eval_every": 6, "train.checkpoint_every": 100})
    loop.train(cfg, str(tmp_path / "a"))
    loop.train(cfg, str(tmp_path / "b"), stop_at=7)
    status, reason = RunDir(str(tmp_path / "b")).status()
    assert status == "running" and "step 7" in reason
    loop.train(cfg, str(tmp_path / "b"))
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert losses(tmp_path / "b", "val") == losses(tmp_path / "a", "val")
    assert RunDir(str(tmp_path / "b")).status()[0] == "done"
    # A run directory copied without its checkpoints starts again at step 0, and its record with it:
    # one record per (step, split), as a run trained once holds, not the old ones followed by the new.
    shutil.rmtree(tmp_path / "b" / "checkpoints")
    (tmp_path / "b" / "STATUS").write_text("running\ninterrupted (15) at step 7; rerun to resume\n")
    loop.train(cfg, str(tmp_path / "b"))
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert losses(tmp_path / "b", "val") == losses(tmp_path / "a", "val")


def test_sharded_mesh_matches_one_device(tmp_path):
    assert jax.device_count() == 8
    cfg1 = smoke(**{"train.steps": 4, "train.log_every": 1, "train.eval_every": 4, "mesh.devices": 1})
    cfg8 = smoke(**{"train.steps": 4, "train.log_every": 1, "train.eval_every": 4, "mesh.data": 2, "mesh.fsdp": 4})
    loop.train(cfg1, str(tmp_path / "one"))
    loop.train(cfg8, str(tmp_path / "mesh"))
    one, mesh = np.array(losses(tmp_path / "one")), np.array(losses(tmp_path / "mesh"))
    # Same math, different reduction order across 8 shards: bf16 compute keeps them within 1e-3.
    np.testing.assert_allclose(mesh, one, rtol=1e-3)


@pytest.mark.parametrize("override, message", [
    ({"recipe": "fp7"}, "unknown recipe"),
    ({"mesh.data": 3}, "mesh"),
    ({"model.size": "2b"}, "unknown model size"),
    ({"policy": "bf17"}, "unknown policy"),
    ({"recipe": "fp8_pallas"}, "fp8_transposes='pallas', whose cast-transpose kernel is not partitioned across the "
                               "mesh's 8 devices"),
])
def test_config_errors_are_clear(tmp_path, override, message):
    with pytest.raises(loop.ConfigError, match=message):  # before start-up: no run directory is made
        loop.train(smoke(**override), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_config_key_is_an_error(tmp_path):
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke",
           "--workdir", str(tmp_path), "--config.train.stepz=3"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "stepz" in out.stderr
    # One line naming the field, its closest match and the fields there; no traceback.
    assert out.stderr.strip().splitlines() == [
        "error: --config.train.stepz: unknown config field 'train.stepz'; did you mean 'train.steps'; fields of "
        "train: checkpoint_every, eval_batches, eval_every, keep_checkpoints, log_every, progress, "
        "seeds_per_process, steps, telemetry_every"], out.stderr
    assert not tmp_path.joinpath("config.json").exists()


def test_two_process_run(tmp_path):
    """Two CPU processes (2 devices each) train one model through jax.distributed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               LOWPREC_COORDINATOR="127.0.0.1:%d" % (20000 + os.getpid() % 20000), LOWPREC_NUM_PROCESSES="2",
               PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke",
           "--workdir", str(tmp_path / "run"), "--config.train.steps=6", "--config.train.log_every=2",
           "--config.train.eval_every=6", "--config.train.progress=False"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(env, LOWPREC_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
    ref = smoke(**{"train.steps": 6, "train.log_every": 2, "train.eval_every": 6, "mesh.devices": 4})
    loop.train(ref, str(tmp_path / "ref"))
    np.testing.assert_allclose(np.array(losses(tmp_path / "run")), np.array(losses(tmp_path / "ref")), rtol=1e-3)


def test_telemetry_is_recorded(tmp_path):
    cfg = smoke(**{"train.steps": 4, "train.log_every": 2, "train.eval_every": 4, "train.telemetry_every": 2,
                   "recipe": "fp4_paper"})
    loop.train(cfg, str(tmp_path))
    records = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "telemetry"]
    assert [r["step"] for r in records] == [2, 4]
    keys = records[0].keys()
    assert "blocks/mlp/up[1]/fwd_act/sqnr_db" in keys and "blocks/attn/q[0]/dgrad_grad/amax" in keys
    assert not any(k.startswith("lm_head/fwd") for k in keys)  # the LM head stays bf16: no rows
    sqnr = records[0]["blocks/mlp/up[1]/fwd_weight/sqnr_db"]
    assert 10 < sqnr < 30  # FP4 weights: about 4 bits of signal


def test_nonfinite_loss_names_step_and_layer(tmp_path):
    cfg = smoke(**{"train.steps": 10, "train.log_every": 2, "optim.lr": 1e30, "optim.warmup_steps": 1,
                   "optim.clip_norm": 1e30})
    with pytest.raises(loop.NonFiniteLoss, match=r"at step \d+ .*first non-finite: layer 0"):
        loop.train(cfg, str(tmp_path))
    assert RunDir(str(tmp_path)).status()[0] == "failed"


def test_delayed_scaling_carries_its_histories_and_resumes_bit_identically(tmp_path):
    from lowprec.ops import ROLES
    from lowprec.train import restore

    cfg = smoke(**{"recipe": "fp8_delayed", "train.steps": 8, "train.log_every": 2, "train.eval_every": 4,
                   "train.checkpoint_every": 100})
    loop.train(cfg, str(tmp_path / "a"))
    loop.train(cfg, str(tmp_path / "b"), stop_at=5)
    loop.train(cfg, str(tmp_path / "b"))
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert losses(tmp_path / "b", "val") == losses(tmp_path / "a", "val")
    history = np.asarray(restore.load_run(str(tmp_path / "a")).model.blocks.mlp.down.amax_history[...])
    delayed = [ROLES.index(r) for r in ("fwd_act", "fwd_weight", "dgrad_grad", "wgrad_grad")]
    assert history.shape == (2, len(ROLES), 16)  # two stacked layers
    assert np.all(history[:, delayed, :8] > 0) and not history[:, delayed, 8:].any()  # one amax per step
    assert not history[:, [ROLES.index("dgrad_weight"), ROLES.index("wgrad_act")]].any()  # reused roles


def test_gradient_accumulation_keeps_the_largest_amax_of_the_micro_batches():
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import lowprec as lp
    from lowprec.train.step import TrainState, make_loss_fn, make_train_step, split_histories

    model = lp.nn.QuantDense(8, 4, recipe="fp8_delayed", use_bias=False, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    amax, rest = split_histories(rest)

    def loss_fn(p, tokens, step, frozen=None, h=None):  # tokens: (B, 9) floats standing for inputs
        m = nnx.merge(graphdef, p, h, rest)
        return jnp.sum(m(tokens[:, :8]) ** 2, axis=-1)

    x = jnp.concatenate([jnp.ones((2, 9)), 100 * jnp.ones((2, 9))])  # second micro-batch: larger
    state = TrainState(jnp.zeros((), jnp.int32), params, optax.sgd(0.0).init(params), amax)
    new, _ = make_train_step(loss_fn, optax.sgd(0.0), 2, False)(state, x)
    row = np.asarray(new.amax["amax_history"][...])[lp.ops.ROLES.index("fwd_act")]
    assert row[0] == 100.0 and not row[1:].any()
