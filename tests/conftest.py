"""Test settings: 8 fake CPU devices for sharding tests, loud rank promotion, a shared persistent
compilation cache, and the `slow` marker from tests/slow.txt."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One persistent compilation cache for the test processes, the xdist workers and the training
# subprocesses they start: a program compiled once (the smoke model's step) loads from disk after.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"lowprec-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def _slow_entries() -> list[str]:
    path = os.path.join(os.path.dirname(__file__), "slow.txt")
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def pytest_collection_modifyitems(config, items):
    """Marks the tests listed in tests/slow.txt `slow` (a file, a test, or one parametrized case)."""
    import pytest

    entries = _slow_entries()
    for item in items:
        nodeid = item.nodeid
        if any(nodeid == e or nodeid.startswith(e + "::") or nodeid.startswith(e + "[") for e in entries):
            item.add_marker(pytest.mark.slow)
