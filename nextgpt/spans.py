"""Which signal spans of a reply get decoded: at most `max_media_per_modality` per modality, the first
ones, with a warning naming how many were skipped. One rule for the in-process pipeline (which sees the
whole reply) and the gateway (which decides span by span as the LLM streams them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nextgpt.types import MODALITIES, Modality


@dataclass
class SpanChooser:
    limit: int
    """`max_media_per_modality` of the request."""
    seen: dict[Modality, int] = field(default_factory=dict)

    def take(self, modality: Modality) -> int | None:
        """The next span's index within its modality, or None when it is past the limit."""
        k = self.seen.get(modality, 0)
        self.seen[modality] = k + 1
        return k if k < self.limit else None

    def warnings(self) -> list[str]:
        return [
            f"the reply holds {n} {m} spans; decoding the first {self.limit} (raise max_media_per_modality "
            "for more)"
            for m in MODALITIES
            if (n := self.seen.get(m, 0)) > self.limit
        ]
