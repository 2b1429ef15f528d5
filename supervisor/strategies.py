"""Which children share the fate of a failed one, with the names OTP gave these choices.

A strategy only chooses; the supervisor stops the chosen children in reverse start order and starts
them again in start order, so every strategy gets the same shutdown discipline for free.
"""

from __future__ import annotations

from collections.abc import Sequence


class Strategy:
    """Base of the restart strategies; subclasses override `affected` and nothing else."""

    def affected(self, names: Sequence[str], failed: str) -> list[str]:
        """Slots to restart, in start order, when slot `failed` dies; `names` is the start order."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class OneForOne(Strategy):
    """Children are independent: only the failed one restarts."""

    def affected(self, names: Sequence[str], failed: str) -> list[str]:
        return [failed]


class OneForAll(Strategy):
    """Children depend on each other: any failure restarts them all."""

    def affected(self, names: Sequence[str], failed: str) -> list[str]:
        return list(names)


class RestForOne(Strategy):
    """Later children depend on earlier ones: the failed child and those started after it restart."""

    def affected(self, names: Sequence[str], failed: str) -> list[str]:
        return list(names[names.index(failed) :])
