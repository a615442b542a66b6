"""Multi-process start-up: ``jax.distributed.initialize()`` where the environment asks for it,
and a watchdog that ends a process whose peer is gone instead of leaving it in a collective."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from typing import Callable

import jax
import numpy as np

log = logging.getLogger(__name__)

# Seconds without a sign of life from a peer (or from the coordinator) before a process gives
# up: long enough for a slow step, compile or checkpoint save (the watchdog runs in its own
# thread, so those keep it fed), short enough that a dead peer does not hold a job's nodes.
PEER_TIMEOUT_ENV = "LOWPREC_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 60.0
EXIT_PEER_LOST = 3  # the exit code of a process that stopped because a peer was lost
_KEY = "lowprec/alive/"


def peer_timeout_s() -> float:
    """``$LOWPREC_PEER_TIMEOUT_S`` (default 60): how long a silent peer is waited for."""
    raw = os.environ.get(PEER_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PEER_TIMEOUT_S
    except ValueError:
        raise ValueError(f"${PEER_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0") from None
    if value <= 0:
        raise ValueError(f"${PEER_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return value


def maybe_initialize() -> bool:
    """Initializes JAX's distributed runtime when launched as one of several processes.

    - SLURM with more than one task, or a TPU pod: JAX detects the cluster itself.
    - Explicit: ``LOWPREC_COORDINATOR=host:port LOWPREC_NUM_PROCESSES=n LOWPREC_PROCESS_ID=i``
      (what the local multi-process test and custom launchers use).
    Then a :class:`Watchdog` ends this process (exit code ``EXIT_PEER_LOST``) with one error line
    naming the lost process once a peer is silent for ``$LOWPREC_PEER_TIMEOUT_S``.
    Returns whether it initialized.
    """
    timeout = peer_timeout_s()
    # JAX's own heartbeat ends a process with a fatal abort and a stack dump: with the watchdog it
    # is set well past the watchdog's timeout, so the watchdog's clear error comes first; without
    # it (a JAX whose key-value client moved), JAX's heartbeat is the only guard and gets the timeout.
    watched = not _client_api_moved()
    options = _accepted({"heartbeat_timeout_seconds": int(max(100, 3 * timeout) if watched else max(10, timeout))})
    if os.environ.get("LOWPREC_COORDINATOR"):
        n, i = int(os.environ["LOWPREC_NUM_PROCESSES"]), int(os.environ["LOWPREC_PROCESS_ID"])
        if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU collectives across processes
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ["LOWPREC_COORDINATOR"], num_processes=n, process_id=i, **options)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize(**options)
    else:
        return False
    log.info("distributed: process %d of %d, %d local / %d global devices; peers lost after %g s of silence",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(), timeout)
    client = _kv_client()
    if client is None:
        log.warning("jax %s exposes no key-value client (jax._src.distributed.global_state.client): no peer "
                    "watchdog; JAX's own heartbeat (%d s) ends a process whose peer is lost",
                    jax.__version__, options.get("heartbeat_timeout_seconds", 100))
    else:
        Watchdog(timeout, client).start()
    return True


def _kv_client():
    """The coordination service's client JAX itself uses (private: ``jax._src.distributed``,
    stable from 0.4 to 0.11), or None where it is not there (or not connected yet)."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return None
    client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
    if client is None or not all(hasattr(client, m) for m in ("key_value_set", "key_value_try_get")):
        return None
    return client


def _client_api_moved() -> bool:
    """Whether this JAX lacks the private state the watchdog reads (checked before initialize)."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return True
    return not hasattr(getattr(jax_distributed, "global_state", None), "client")


def _accepted(options: dict) -> dict:
    """``options`` that this JAX's ``jax.distributed.initialize`` takes (it has taken
    ``heartbeat_timeout_seconds`` since 0.4.x); a dropped one is logged."""
    params = inspect.signature(jax.distributed.initialize).parameters
    for name in set(options) - set(params):
        log.warning("jax %s's distributed.initialize has no %s: its default applies", jax.__version__, name)
    return {k: v for k, v in options.items() if k in params}


_on_lost: list[Callable[[str], None]] = []


def on_peer_lost(callback: Callable[[str], None]) -> Callable[[], None]:
    """Calls ``callback(reason)`` before the watchdog ends the process (e.g. to write STATUS);
    returns a function that unregisters it."""
    _on_lost.append(callback)
    return lambda: _on_lost.remove(callback) if callback in _on_lost else None


class Watchdog:
    """Each process bumps a counter in the coordination service's key-value store every
    ``timeout / 6`` s and reads the others'. A peer whose counter stops moving for ``timeout``
    s, or a coordinator that stops answering, is lost: one error line names it, the
    :func:`on_peer_lost` callbacks run and the process exits with ``EXIT_PEER_LOST`` (its main
    thread may be blocked in a collective that would never return). It keeps watching while the
    process exits: ``jax.distributed.shutdown`` waits for every process, so a process that
    failed (e.g. a collective raised because its peer's connection closed) would otherwise wait
    there for a dead peer; processes exiting together stay alive for each other until the end."""

    def __init__(self, timeout: float, client):
        self.client, self.timeout, self.me, self.n = client, timeout, jax.process_index(), jax.process_count()
        self.stopped = threading.Event()
        self.seen: dict[int, tuple[str | None, float]] = {}  # peer -> (last value, when it changed)

    def start(self) -> None:
        threading.Thread(target=self._run, name="lowprec-peer-watchdog", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _set(self, value: str) -> bool:
        try:
            self.client.key_value_set(f"{_KEY}{self.me}", value, allow_overwrite=True)
            return True
        except Exception:  # noqa: BLE001 - any failure to reach the coordinator counts as silence
            return False

    def _run(self) -> None:
        beat, last_ok = 0, time.monotonic()
        while not self.stopped.wait(self.timeout / 6):
            beat += 1
            now = time.monotonic()
            if self._set(str(beat)):
                last_ok = now
            elif now - last_ok > self.timeout:
                self._lost(f"the coordinator (process 0) has not answered for {now - last_ok:.0f} s")
            for peer in (p for p in range(self.n) if p != self.me):
                value = self._get(peer)
                old, since = self.seen.get(peer, (None, now))
                if peer not in self.seen or value != old:
                    self.seen[peer] = (value, now)
                elif now - since > self.timeout:
                    self._lost(f"process {peer} of {self.n} has sent no heartbeat for {now - since:.0f} s "
                               "(killed, stopped, crashed or its host is gone)")

    def _get(self, peer: int) -> str | None:
        try:
            return self.client.key_value_try_get(f"{_KEY}{peer}")
        except Exception:  # noqa: BLE001 - not set yet, or the coordinator is unreachable
            return None

    def _lost(self, what: str) -> None:
        if self.stopped.is_set():
            return
        reason = f"lost a peer: {what}; process {self.me} stops (exit code {EXIT_PEER_LOST})"
        log.error("%s", reason)
        for callback in list(_on_lost):
            try:
                callback(reason)
            except Exception as e:  # noqa: BLE001 - the process ends either way; say why the record failed
                log.error("while stopping after a lost peer: %s: %s", type(e).__name__, e)
        logging.shutdown()
        os._exit(EXIT_PEER_LOST)


_pending_stop: list = []  # this process's stop request, until the processes agree on it


def agree_on_stop(signal, sync_point: bool):
    """Whether to stop after this step, the same answer in every process: ``signal`` (this
    process's stop request, e.g. a SIGTERM it caught; falsy: none) in one process; with several,
    requests are held until a ``sync_point`` (a step every process reaches, e.g. each logging
    step) and then stop all processes if any asked, so that all save one checkpoint of one step
    (a process saving alone would wait in orbax's barrier while the others train on)."""
    if jax.process_count() == 1:
        return signal
    if signal and not _pending_stop:
        _pending_stop.append(signal)
    if not sync_point:
        return None
    from jax.experimental import multihost_utils

    asked = multihost_utils.process_allgather(np.int32(bool(_pending_stop)))
    if not np.any(asked):
        return None
    mine = _pending_stop.pop() if _pending_stop else None
    return mine or f"stop requested by process {int(np.argmax(asked))}"


def gather_flags(value: int) -> list[int]:
    """Every process's ``value`` (an int), in process order: a collective that each process must
    reach (so it is also a barrier); one process: ``[value]``, no collective."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)]
