"""A tiny sweep file over the smoke config (4 steps), and the environment its runs need."""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Default: two runs that train and one whose mesh asks for 3 devices where there is one (the
# trainer fails at once, STATUS failed with the reason). "bad": four such failing runs.
# "types": overrides of several field types. "seeds": seeds of one setting, for grouping.
SWEEP_FILE = textwrap.dedent("""
    from configs import lm
    from launch.sweep import axis, product, seeds, zip_axes

    def get_config(arg=None):
        c = lm.get_config("smoke")
        c.policy = "fp32"  # compiles quickest on a CPU
        c.train.steps, c.train.log_every, c.train.eval_every = 4, 2, 4
        c.train.checkpoint_every, c.train.eval_batches, c.train.progress = 4, 1, False
        return c

    def get_sweep(arg=None):
        if arg == "bad":
            return axis("mesh.data", [3, 5, 6, 7])
        if arg == "seeds":  # bf16 with seeds 0, 1, 2; none with seed 5 alone
            return product(axis("recipe", ["bf16"]), seeds(3)) + [{"recipe": "none", "seed": 5}]
        if arg == "types":
            return product(zip_axes(axis("optim.lr", [1e-3, 2.5e-20]),
                                    axis("recipe_rules", [(("lm_head", "bf16"), ("mlp.*", "fp8")), ()])),
                           axis("train.progress", [True]), axis("model.attention", ["", "xla"]))
        return axis("recipe", ["none", "bf16"]) + [{"recipe": "bf16", "mesh.data": 3}]
""")


def run_env() -> dict:
    """The environment of launched runs: CPU only, one device."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "sweep_cfg.py"
    path.write_text(SWEEP_FILE)
    return str(path)


@pytest.fixture
def in_repo(monkeypatch):
    """Runs launched from this process (in-process runners) start in the repository root on CPU."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return REPO


def _launch(spec, root, *extra, wait=True):
    """``python -m launch.sweep spec --root root ...`` from the repository root: (exit code, output)
    or, with wait=False, the process."""
    cmd = [sys.executable, "-m", "launch.sweep", spec, "--root", root, "--refresh", "1", *extra]
    p = subprocess.Popen(cmd, cwd=REPO, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def _starts(run_path) -> int:
    """How many times a runner started the run (its runner.log's "started" lines)."""
    log = os.path.join(run_path, "runner.log")
    if not os.path.exists(log):
        return 0
    with open(log) as f:
        return sum(" started on slot " in line for line in f)


@pytest.fixture
def launch():
    return _launch


@pytest.fixture
def starts():
    return _starts


@pytest.fixture
def launch_env():
    return run_env()
