"""The defect log: what was wrong with a message but recovered, as data.

Every helper of the parser that repairs something records it here instead of
raising. The log is bounded so that hostile input (ten thousand broken headers)
cannot grow an event without limit.
"""

from __future__ import annotations

from ticketflow.model import Defect

# More distinct defects than this add nothing a reader can act on; the rest are
# counted in one final "defect_limit" entry.
MAX_DEFECTS = 100


class DefectLog:
    """An ordered, de-duplicated, bounded list of `Defect`s."""

    def __init__(self) -> None:
        self._defects: list[Defect] = []
        self._seen: set[tuple[str, str]] = set()
        self._dropped = 0

    def add(self, code: str, detail: str) -> None:
        """Record one defect; an identical (code, detail) pair is kept once."""
        key = (code, detail)
        if key in self._seen:
            return
        if len(self._defects) >= MAX_DEFECTS:
            self._dropped += 1
            return
        self._seen.add(key)
        self._defects.append({"code": code, "detail": detail})

    def codes(self) -> list[str]:
        """Return the codes recorded so far, in order."""
        return [defect["code"] for defect in self._defects]

    def extend(self, other: DefectLog) -> None:
        """Append every defect of `other` that this log does not have yet."""
        for defect in other.as_list():
            self.add(defect["code"], defect["detail"])

    def as_list(self) -> list[Defect]:
        """Return the defects as event data, with a final entry if some were dropped."""
        defects = [dict(defect) for defect in self._defects]
        if self._dropped:
            defects.append(
                {"code": "defect_limit", "detail": f"{self._dropped} further defects not listed"}
            )
        return defects  # type: ignore[return-value]
