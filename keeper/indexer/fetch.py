"""The block span of the next ``eth_getLogs`` (the fetching side of the indexer).

:class:`AdaptiveRange` doubles the span on success (while the answers stay small), halves it or takes
the provider's suggestion on a range error (:class:`keeper.chain.logs.RangeTooLarge`: a refusal, a
timeout, a truncated or malformed answer), and remembers a hard limit a provider stated.
"""

from __future__ import annotations

from keeper.chain.logs import RangeTooLarge

__all__ = ["AdaptiveRange"]


class AdaptiveRange:
    """Span (in blocks) of the next log query."""

    def __init__(
        self, initial: int, minimum: int = 1, maximum: int = 100_000, target_logs: int = 5_000
    ) -> None:
        self.minimum = max(1, minimum)
        self.maximum = max(self.minimum, maximum)
        self.size = min(max(initial, self.minimum), self.maximum)
        self.target_logs = target_logs
        self.cap: int | None = None  # a hard limit the provider told us about
        #: the widest span answered within twice target_logs since the density last jumped: the span
        #: the next ranges can take without a surprise (see :meth:`parts`)
        self.proven = 0

    def success(self, span: int, n_logs: int) -> None:
        if n_logs > 2 * self.target_logs and span > self.minimum:
            # proportional: a dense chain reaches target_logs per range at once (bounded memory)
            self.size = max(self.minimum, min(span // 2, span * self.target_logs // n_logs))
            self.proven = min(self.proven, self.size)
            return
        self.proven = max(self.proven, span)
        if n_logs < self.target_logs and span >= self.size:
            self.size = min(self.maximum, self.size * 2, self.cap or self.maximum)

    def parts(self, most: int) -> int:
        """Into how many consecutive requests (at most ``most``), fetched at once, the next ``size``
        blocks go.

        A span wider than any answered so far holds an unknown density: a dense stretch after sparse
        ones comes back as one huge answer that keeps the node busy for its whole length while nothing
        else arrives. In parts, the first arrives (and is decoded and written) while the node still
        builds the others. The first range of a run is the probe: nothing is proven before it."""
        if self.proven == 0 or self.size <= self.proven:
            return 1
        return max(1, min(most, -(-self.size // self.proven)))

    def too_large(self, span: int, err: RangeTooLarge, start: int) -> None:
        if err.suggested is not None and err.suggested[0] == start or err.suggested is not None:
            new = err.suggested[1] - err.suggested[0] + 1
        elif err.max_blocks is not None:
            new = err.max_blocks
            self.cap = err.max_blocks
        else:
            new = span // 2
        self.size = max(self.minimum, min(new, max(self.minimum, span - 1)))
