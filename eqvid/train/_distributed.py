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
