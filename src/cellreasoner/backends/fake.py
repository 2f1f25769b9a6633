"""A backend for tests that satisfies the real protocol without any model (cf. httpx's
``MockTransport``): the engine, cache, voting and write-back are tested on it without torch.

Example::

    from cellreasoner.backends.fake import FakeBackend

    fake = FakeBackend(lambda prompt, sample: "<think>CD3E is expressed</think>T cell")
    cr.annotate(adata, fake)
    fake.calls  # every prompt the engine asked, in order
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..prompts import Prompt, SamplingParams
from .base import Backend, Generation, ProgressCallback, ResultCallback

#: handler(prompt, sample index) -> the response text, or a ready Generation
Handler = Callable[[Prompt, int], "str | Generation"]

#: Marker genes -> the label the default handler answers (first match wins).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("MS4A1", "B cell"), ("CD79A", "B cell"), ("CD3E", "T cell"), ("CD3D", "T cell"),
    ("NKG7", "natural killer cell"), ("LYZ", "monocyte"), ("PPBP", "platelet"),
)


def marker_handler(prompt: Prompt, sample: int) -> str:
    """Answer from the first known marker in the sentence, citing it in a ``<think>`` block."""
    genes = set(prompt.sentence.split(", "))
    for gene, label in DEFAULT_RULES:
        if gene in genes:
            return f"<think>{gene} is expressed.</think>{label}"
    return "<think>No known marker is expressed.</think>Unknown"


class FakeBackend(Backend):
    """Answers prompts with ``handler`` and records every call.

    Parameters
    ----------
    handler
        ``handler(prompt, sample_index)`` returns the response text (or a
        :class:`~cellreasoner.backends.Generation`); default :func:`marker_handler`.
    model
        The model name reported in provenance and cache keys (default ``"fake"``).
    fail_after
        Raise ``RuntimeError`` once this many prompts were answered (a crash mid-run, for
        resume tests); default ``None``: never.
    """

    name = "fake"

    def __init__(self, handler: Handler | None = None, *, model: str = "fake",
                 fail_after: int | None = None) -> None:
        self.handler = handler or marker_handler
        self.model = model
        self.fail_after = fail_after
        self.calls: list[Prompt] = []
        self.samplings: list[SamplingParams] = []  # the sampling of each generate call
        self.contexts: list = []

    def configure(self, context) -> None:
        self.contexts.append(context)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams,
                 progress: ProgressCallback | None = None,
                 on_result: ResultCallback | None = None) -> list[list[Generation]]:
        self.samplings.append(sampling)
        out: list[list[Generation]] = []
        for i, prompt in enumerate(prompts):
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError(f"FakeBackend: failing after {self.fail_after} prompts")
            self.calls.append(prompt)
            gens = []
            for s in range(max(1, int(sampling.n))):
                got = self.handler(prompt, s)
                gens.append(got if isinstance(got, Generation) else Generation(str(got)))
            out.append(gens)
            if on_result is not None:
                on_result(i, gens)
            if progress is not None:
                progress(1)
        return out
