"""Multi-process start-up: ``jax.distributed.initialize()`` where the environment asks for it."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def maybe_initialize() -> bool:
    """Initializes JAX's distributed runtime when launched as one of several processes.

    - SLURM with more than one task, or a TPU pod: JAX detects the cluster itself.
    - Explicit: ``LOWPREC_COORDINATOR=host:port LOWPREC_NUM_PROCESSES=n LOWPREC_PROCESS_ID=i``
      (what the local multi-process test and custom launchers use).
    Returns whether it initialized.
    """
    if os.environ.get("LOWPREC_COORDINATOR"):
        n, i = int(os.environ["LOWPREC_NUM_PROCESSES"]), int(os.environ["LOWPREC_PROCESS_ID"])
        if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU collectives across processes
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ["LOWPREC_COORDINATOR"], num_processes=n, process_id=i)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()
    else:
        return False
    log.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
