"""Connecting to Ray: a cluster given by address, the one already started, or a local one.

Ray is the optional extra ``ray`` (``pip install 'cellreasoner[ray]'``), imported only here,
when a run asks for ``engine="ray"``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, require

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def import_ray() -> Any:
    """The ``ray`` module, or a message naming the extra to install."""
    return require("ray", "ray", "engine='ray' (--engine ray)")


@dataclass
class RayCluster:
    """The Ray cluster a run uses: ``workers`` tasks (or backend replicas) at a time."""

    ray: Any
    workers: int
    started_here: bool

    def one_machine(self) -> bool:
        """Whether every alive node of the cluster is this machine (its workers see this
        machine's files at the same paths)."""
        here = self.ray.util.get_node_ip_address()
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return bool(nodes) and all(n.get("NodeManagerAddress") == here for n in nodes)


def _cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextmanager
def connect(address: str | None = None, workers: int | None = None):
    """Yield a :class:`RayCluster`; a local cluster started here is shut down at the end.

    Parameters
    ----------
    address
        ``None``: the Ray session this process has already started, else a new local cluster
        of ``workers`` CPUs; ``"auto"``: the cluster this machine belongs to (``ray start``);
        ``"ray://host:10001"`` (Ray Client) or a GCS ``host:port``.
    workers
        Tasks or backend replicas run at a time (default: the cluster's CPUs).
    """
    if workers is not None and int(workers) < 1:
        raise InputError(f"workers (--workers) must be at least 1, not {workers}.")
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"--address {address}: cannot connect to a Ray cluster there "
                                 f"({exc}). Start one with `ray start --head`, or leave "
                                 "--address out for a local cluster.") from None
        else:
            ray.init(num_cpus=int(workers or os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False)
            started = True
    n = int(workers) if workers else _cluster_cpus(ray)
    log.info("Ray: %d worker(s) on %s", n, "a local cluster" if started else "the cluster")
    try:
        yield RayCluster(ray, n, started)
    finally:
        if started:
            ray.shutdown()


__all__ = ["ENGINES", "RayCluster", "connect", "import_ray"]
