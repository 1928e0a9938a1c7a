"""A source over records already in memory: dead letters to redrive, for instance."""

from __future__ import annotations

from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from ticketflow.model import RawMessage


class _RecordsPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, records: list[RawMessage], start: int, batch_size: int) -> None:
        self._records = records
        self._position = start
        self._batch_size = batch_size

    def next_batch(self) -> list[RawMessage]:
        if self._position >= len(self._records):
            raise StopIteration()
        batch = self._records[self._position : self._position + self._batch_size]
        self._position += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._position


class RecordsSource(FixedPartitionedSource[RawMessage, int]):
    """Emit a fixed list of records once, in order, from one partition; resumable by position."""

    def __init__(self, records: list[RawMessage], batch_size: int = 256) -> None:
        self._records = records
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        return ["records"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _RecordsPartition:
        return _RecordsPartition(self._records, resume_state or 0, self._batch_size)
