"""Prompt backends (LLMs) on Ray: a pool of backend replicas (Ray actors).

:class:`ReplicaPool` is a :class:`~cellreasoner.backends.Backend`, so the engine uses it as it
uses any backend: prompts are deduplicated before they reach it (identical prompts are asked
once), cluster mode asks it one prompt per cluster. Its :meth:`~ReplicaPool.generate` cuts the
unique prompts into blocks, each answered by one replica; every replica runs the chosen backend
(``transformers``/``vllm`` with ``num_gpus`` each, ``openai`` with its own bounded
``concurrency`` of requests in flight, so ``workers x concurrency`` requests saturate a shared
server without flooding it). Finished blocks stream back to the driver, which records them in
the run manifest; a rerun reads them back. A replica that dies is restarted by Ray and its
block asked again (``max_restarts``, ``max_task_retries``); its answers arrive once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import pandas as pd

from ..backends import backend_class
from ..backends.base import Backend, Generation, ProgressCallback, ResultCallback, RunContext
from ..prompts import Prompt, SamplingParams
from .cluster import RayCluster
from .manifest import RunManifest

log = logging.getLogger(__name__)

#: Restarts of a replica whose process died, and retries of the block it was answering.
MAX_RESTARTS = 3


class _Replica:
    """One backend in a Ray actor."""

    def __init__(self, name: str, options: dict) -> None:
        from ..backends import get_backend

        self.be = get_backend(name, **options)
        self.context: RunContext | None = None


    def describe(self) -> tuple[str, dict]:
        return self.be.model, self.be.describe()

    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 context: RunContext | None) -> list[list[Generation]]:
        # the run's context travels with every block: a replica Ray restarted after its
        # process died is configured again before it answers
        if context is not None and context != self.context:
            self.be.configure(context)
            self.context = context
        return self.be.generate(prompts, sampling)


def generations_frame(gens: Sequence[Sequence[Generation]]) -> pd.DataFrame:
    """A block's generations as a table (the manifest's block file): one row per sample."""
    rows = [{"prompt": i, "sample": j, "text": g.text, "reasoning": g.reasoning,
             "meta": json.dumps(g.meta, default=str)}
            for i, samples in enumerate(gens) for j, g in enumerate(samples)]
    return pd.DataFrame(rows, columns=["prompt", "sample", "text", "reasoning", "meta"])


def frame_generations(frame: pd.DataFrame, n_prompts: int) -> list[list[Generation]]:
    """:func:`generations_frame` read back."""
    out: list[list[Generation]] = [[] for _ in range(n_prompts)]
    for row in frame.sort_values(["prompt", "sample"]).itertuples(index=False):
        reasoning = row.reasoning if isinstance(row.reasoning, str) else None
        out[int(row.prompt)].append(Generation(row.text, reasoning, json.loads(row.meta)))
    return out


def prompt_block_id(prompts: Sequence[Prompt], sampling: SamplingParams) -> str:
    """A block's identity: its prompts and sampling (the same block in a rerun)."""
    h = hashlib.sha256(sampling.key().encode())
    for p in prompts:
        h.update(p.key().encode())
    return f"prompts {h.hexdigest()[:24]}"


class ReplicaPool(Backend):
    """``cluster.workers`` replicas of the backend ``name`` as Ray actors.

    Parameters
    ----------
    name
        Registry name of the backend each replica runs.
    options
        Its constructor options (``model``, ``base_url``, ``concurrency``, ...).
    cluster
        The Ray cluster (:func:`~cellreasoner.distributed.cluster.connect`).
    block_size
        Prompts per block (one replica call, one manifest entry).
    num_gpus
        GPUs per replica (``transformers``, ``vllm``; default 0).
    manifest
        The run manifest, or ``None`` (no resume).
    """

    def __init__(self, name: str, options: dict, cluster: RayCluster, *, block_size: int = 256,
                 num_gpus: float = 0, manifest: RunManifest | None = None) -> None:
        self.name = name
        self.capabilities = backend_class(name).capabilities
        self.cluster, self.block_size, self.manifest = cluster, int(block_size), manifest
        ray = cluster.ray
        actor = ray.remote(_Replica).options(
            num_cpus=0 if num_gpus else 1, num_gpus=num_gpus, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS)
        self.replicas = [actor.remote(name, dict(options)) for _ in range(cluster.workers)]
        self.model, self._describe = ray.get(self.replicas[0].describe.remote())
        #: prompts sent to replicas (not read back from the manifest)
        self.asked = 0
        self.context: RunContext | None = None

    def configure(self, context: RunContext) -> None:
        """Keep the run's context; it is sent with each block (see :class:`_Replica`)."""
        self.context = context

    def describe(self) -> dict:
        return {**self._describe, "replicas": len(self.replicas)}

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams,
                 progress: ProgressCallback | None = None,
                 on_result: ResultCallback | None = None) -> list[list[Generation]]:
        """Answer the (unique) prompts in blocks spread over the replicas."""
        out: list[list[Generation] | None] = [None] * len(prompts)
        blocks = [(lo, list(prompts[lo:lo + self.block_size]))
                  for lo in range(0, len(prompts), self.block_size)]

        def finish(lo: int, gens: list[list[Generation]], record: str | None) -> None:
            if record is not None and self.manifest is not None:
                self.manifest.record(record, generations_frame(gens))
            for j, g in enumerate(gens):
                out[lo + j] = g
                if on_result is not None:
                    on_result(lo + j, g)
            if progress is not None:
                progress(len(gens))

        idle = list(self.replicas) * 2  # two blocks in flight per replica
        pending: dict = {}
        for lo, block in blocks:
            bid = prompt_block_id(block, sampling)
            if self.manifest is not None and self.manifest.finished(bid):
                finish(lo, frame_generations(self.manifest.load(bid), len(block)), None)
                continue
            while not idle:
                idle.append(self._collect(pending, finish))
            replica = idle.pop()
            self.asked += len(block)
            pending[replica.generate.remote(block, sampling, self.context)] = (lo, bid, replica)
        while pending:
            self._collect(pending, finish)
        return out  # type: ignore[return-value]

    def _collect(self, pending: dict, finish) -> object:
        """Wait for one block; returns the replica that answered it."""
        ray = self.cluster.ray
        [ref], _ = ray.wait(list(pending), num_returns=1)
        lo, bid, replica = pending.pop(ref)
        finish(lo, ray.get(ref), bid)
        return replica

    def close(self) -> None:
        for r in self.replicas:
            self.cluster.ray.kill(r)
        self.replicas = []


__all__ = ["ReplicaPool", "frame_generations", "generations_frame", "prompt_block_id"]
