"""``cellreasoner.distributed``: annotate off the calling process, on local worker processes
(``workers=N``) or a Ray cluster (``engine="ray"``).

- :mod:`.processes` (+ :mod:`._worker`, their entry point): the local engine's worker processes;
- :mod:`.cluster`: connecting (an address, the running session, or a local cluster);
- :mod:`.matrix`: the built-in reasoner's chunks of cells as Ray tasks;
- :mod:`.prompts`: model backends as a pool of replicas (Ray actors) answering blocks of
  unique prompts;
- :mod:`.manifest`: the run manifest (finished blocks; a rerun skips them), its objects kept
  by :mod:`.store` in a local folder or on an object store (``s3://``, ``gs://``, ...);
- :mod:`.llm`: the ``ray.data.llm`` vLLM processor built from our backend settings.

Ray is the optional extra ``ray``: ``pip install 'cellreasoner[ray]'``.
"""

from __future__ import annotations

from .cluster import ENGINES, connect
from .manifest import RunManifest

__all__ = ["ENGINES", "RunManifest", "connect"]
