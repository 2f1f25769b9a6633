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

from .._secrets import redact_text, redact_url
from .._system import available_cores, available_memory
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
        ``None``: the Ray session this process has already started, else the cluster
        ``$RAY_ADDRESS`` names (as ``ray.init()`` reads it), else a new local cluster of
        ``workers`` CPUs; ``"auto"``: the cluster this machine belongs to (``ray start``);
        ``"ray://host:10001"`` (Ray Client) or a GCS ``host:port``.
    workers
        Tasks or backend replicas run at a time (default: the cluster's CPUs).
    """
    if workers is not None and int(workers) < 1:
        raise InputError(f"workers (--workers) must be at least 1, not {workers}.")
    ray = import_ray()
    started, local = False, None
    if not ray.is_initialized():
        given = "--address"
        if not address and os.environ.get("RAY_ADDRESS"):
            address, given = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
        if address:
            unreachable = _unreachable(address)
            if unreachable:
                raise _cannot_connect(given, address, unreachable)
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise _cannot_connect(given, address, str(exc), _auth_hint()) from None
        else:
            local = _start_local(ray, int(workers or available_cores()))
            started = True
    n = int(workers) if workers else _cluster_cpus(ray)
    log.info("Ray: %d worker(s) on %s", n, "a local cluster" if started else "the cluster")
    try:
        yield RayCluster(ray, n, started)
    finally:
        if started:
            ray.shutdown()
            if local is not None:
                local.shutdown()


def _cannot_connect(given: str, address: str, why: str, hint: str = "") -> InputError:
    """The one error for a cluster address this driver cannot join: its password blanked,
    in the address and in ``why`` (which may quote it: Ray's exception text)."""
    shown = _shown(address)  # registers the password, which redact_text then blanks
    return InputError(f"{given} {shown}: cannot connect to a Ray cluster there "
                      f"({redact_text(why)}). Start one with `ray start --head`, or leave "
                      f"{given} out for a local cluster.{hint}")


def _auth_hint() -> str:
    """What to try when a cluster refuses this driver without its token: ``ray start``
    enables token authentication by default from Ray 2.59, and a driver given the cluster's
    address only sends the token with ``RAY_AUTH_MODE=token`` (``--address auto`` on a node of
    the cluster finds it by itself)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return ""
    return (" If the cluster uses token authentication (`ray start`'s default from Ray "
            "2.59), set RAY_AUTH_MODE=token here too (the token is read from RAY_AUTH_TOKEN "
            "or ~/.ray/auth_token), or use --address auto on one of its nodes.")


#: The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray
#: Client server) answers with its own SETTINGS frame.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why no Ray cluster answers at a ``host:port`` address (a GCS, or ``ray://`` Ray
    Client), or ``None`` when one may (``auto``, ``local``, a TLS cluster, no answer within
    ``timeout``: Ray's own connection decides). Ray itself retries a closed port, or one
    where another service listens, for minutes before it gives up."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local") or ("://" in address and not address.startswith("ray://")):
        return None
    try:
        parts = urlsplit(address if "://" in address else "//" + address)
        host, port = parts.hostname, parts.port
    except ValueError:  # not host:port: Ray's own parsing says what is wrong
        return None
    if not host or not port:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None  # its handshake is TLS first: the connection is all we check
            conn.sendall(_H2_HELLO)
            head = _read_some(conn, 9)
    except TimeoutError:
        return None
    except OSError as exc:
        return f"nothing answers at {host}:{port}: {exc.strerror or exc or type(exc).__name__}"
    if len(head) < 9 or head[3] != 0x04:  # closed, or not an HTTP/2 SETTINGS frame
        return (f"the service at {host}:{port} is not a Ray cluster's (it does not speak gRPC;"
                f" a Ray dashboard or job server port? The cluster's address is the GCS port, "
                f"6379 by default, or ray://host:10001 for Ray Client)")
    return None


def _read_some(conn, n: int) -> bytes:
    """Up to ``n`` bytes from ``conn``, fewer when the peer closes first."""
    out = b""
    while len(out) < n:
        try:
            got = conn.recv(n - len(out))
        except ConnectionResetError:
            break
        if not got:
            break
        out += got
    return out


def _shown(address: str) -> str:
    """``address`` as a message shows it: a ``user:password@`` before the host blanked (and
    the password registered, so that an exception's text quoting it is blanked too)."""
    if "://" in address:
        return redact_url(address)
    shown = redact_url("//" + address)  # a GCS host:port has no scheme: read it as a netloc
    return shown.removeprefix("//")


def _start_local(ray, cpus: int) -> Any:
    """Start a one-machine cluster of ``cpus`` CPUs and connect to it; returns the
    :class:`ray.cluster_utils.Cluster` to shut down (``None``: ``ray.init`` started it).

    A run's own cluster has no use for the autoscaler's monitor (the cluster never grows)
    or the log monitor (workers' output is not forwarded): without those two Python
    daemons it starts ~1 s sooner, stops ~0.8 s sooner and takes ~2 s less CPU from the
    workers on a small machine (and ~160 MiB less memory). Where Ray's cluster utilities
    do not take those options (another Ray release), ``ray.init`` starts the usual cluster.
    """
    try:
        from ray.cluster_utils import Cluster

        local = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus, "include_dashboard": False, "include_log_monitor": False,
            "no_monitor": True, "object_store_memory": object_store_bytes()})
    except (ImportError, TypeError, AttributeError) as exc:
        log.debug("Ray: a plain local cluster (%s)", exc)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return None
    try:
        ray.init(address=local.address, log_to_driver=False)
    except BaseException:
        local.shutdown()
        raise
    return local


def object_store_bytes() -> int:
    """The object store a local cluster gets, sized as ``ray.init`` sizes it: 30% of the
    memory available now, at most 95% of the free shared memory (``/dev/shm``) when that
    holds over 10 GB (below, Ray would map a file instead), and at least 75 MiB."""
    size = int(0.3 * available_memory())
    if os.path.isdir("/dev/shm"):
        shm = os.statvfs("/dev/shm")
        size = min(size, max(10**10, int(0.95 * shm.f_bavail * shm.f_frsize)))
    return max(size, 75 << 20)


__all__ = ["ENGINES", "RayCluster", "connect", "import_ray", "object_store_bytes"]
