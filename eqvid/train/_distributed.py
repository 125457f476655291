"""Many hosts: `jax.distributed` from a config (flags or the cluster's environment)."""

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-host run (one process per host, or per GPU).
    Leave `coordinator_address` empty for a single process."""

    coordinator_address: str = ""
    """`host:port` of process 0, reachable from every process; `auto`: let
    `jax.distributed` read it from the cluster environment (SLURM, Open MPI, …);
    empty: a single process."""
    num_processes: int = 0
    """Number of processes in the run (with an explicit coordinator address)."""
    process_id: int = -1
    """This process's index, 0 … num_processes − 1 (with an explicit coordinator address)."""


def initialize_distributed(config: DistributedConfig) -> bool:
    """Join the run `config` describes (once; later calls do nothing). Must come before
    any JAX computation. Returns whether this is a multi-process run."""
    address = config.coordinator_address
    if not address:
        return False
    if jax.distributed.is_initialized():  # already joined
        return True
    if address == "auto":
        jax.distributed.initialize()
        return True
    if config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
        raise ValueError(
            f"DistributedConfig: with coordinator_address={address!r} give num_processes ≥ 1 "
            f"and 0 ≤ process_id < num_processes; got num_processes={config.num_processes}, "
            f"process_id={config.process_id}."
        )
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )
    return True


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Block until every process of a multi-process run has called this with `name`
    (a barrier through the coordination service, not a collective: it waits up to
    `timeout_s` seconds where the CPU collectives give up after 30). Does nothing in
    a single process."""
    if jax.process_count() == 1:
        return
    # jax.distributed's client (the coordination service), as Orbax reaches it.
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(
            "wait_for_all_processes: jax.process_count() > 1 but jax.distributed was "
            "not initialised through jax.distributed.initialize."
        )
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
