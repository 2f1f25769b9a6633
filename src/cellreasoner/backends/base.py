"""The one protocol every annotation backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..prompts import Prompt, SamplingParams

#: Called with the number of prompts just finished, for progress bars.
ProgressCallback = Callable[[int], None]


@dataclass
class Generation:
    """One generated answer.

    ``text`` is the model's visible response; ``reasoning`` holds reasoning that a server
    returned in a separate field (``reasoning_content``) or that a backend produced itself.
    ``meta`` carries backend-specific extras (token counts, confidence, ontology id, ...).
    """

    text: str
    reasoning: str | None = None
    meta: dict = field(default_factory=dict)


#: Called with a prompt's index and its generations as soon as they are finished (caching).
ResultCallback = Callable[[int, list[Generation]], None]


class Backend(ABC):
    """A model that answers CellReasoner prompts.

    Subclasses set ``name`` (the registry name) and ``model`` (what is loaded/served) and
    implement :meth:`generate`. Heavy libraries are imported in ``__init__``, never at module
    import, through :func:`cellreasoner.errors.require`.
    """

    name: str = "base"
    model: str = ""

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer every prompt; returns ``sampling.n`` generations per prompt, in order.

        ``on_result(index, generations)`` is called as each prompt finishes, so callers can
        persist answers before the whole batch is done.
        """

    def describe(self) -> dict:
        """Provenance for ``adata.uns['cellreasoner']``."""
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
