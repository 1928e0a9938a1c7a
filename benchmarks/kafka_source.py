"""Measure records/s through ticketflow's KafkaSource into a no-op sink, against Bytewax's.

Starts a Tansu broker on a loopback port, fills one topic per value size, then
drains each topic through a one-worker Bytewax run (`run_main`) with

- ``ticketflow``: `ticketflow.connectors.kafka.KafkaSource` with ``drain=True``,
  emitting `RawMessage`s;
- ``bytewax``: the bundled `bytewax.connectors.kafka.KafkaSource` with
  ``tail=False``, emitting `KafkaSourceMessage`s, the baseline.

Each run counts what reaches the sink and fails if a record is missing. Runs
alternate between the two sources, and the best of `--repeat` runs is reported,
with the ratio ticketflow / bytewax measured in the same process. Each line also
gives the time to the first record and the rate after it, which separates startup
cost from steady throughput.

    .venv/bin/python benchmarks/kafka_source.py --records 100000 --sizes 1024 10240
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource as BundledKafkaSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from ticketflow.connectors.kafka import KafkaSource, produce_records
from ticketflow.connectors.tansu import TansuBroker


class CountingSink(DynamicSink[Any]):
    """A sink that only counts the items it receives and notes when the first arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.first_write: float | None = None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        return _CountingPartition(self)


class _CountingPartition(StatelessSinkPartition[Any]):
    def __init__(self, sink: CountingSink) -> None:
        self._sink = sink

    def write_batch(self, items: list[Any]) -> None:
        if self._sink.first_write is None:
            self._sink.first_write = time.perf_counter()
        self._sink.count += len(items)


@dataclass(frozen=True)
class Measurement:
    source: str
    value_bytes: int
    records: int
    # From run start to run end, and from run start to the first record in the sink.
    seconds: float
    first_record_seconds: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    @property
    def steady_records_per_second(self) -> float:
        """Return the rate after the first record, which leaves out startup."""
        return self.records / (self.seconds - self.first_record_seconds)


def drain_once(name: str, source: Source[Any], expected: int, value_bytes: int) -> Measurement:
    """Run one flow from `source` to a counting sink and time it."""
    sink = CountingSink()
    flow = Dataflow(f"bench_{name}")
    op.output("out", op.input("read", flow, source), sink)

    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started

    if sink.count != expected or sink.first_write is None:
        raise RuntimeError(f"{name} delivered {sink.count} of {expected} records")
    return Measurement(name, value_bytes, expected, seconds, sink.first_write - started)


def fill_topic(
    broker: TansuBroker, topic: str, records: int, value_bytes: int, partitions: int
) -> float:
    """Create `topic` and write `records` values of `value_bytes`; return the seconds taken."""
    broker.create_topic(topic, partitions)
    value = os.urandom(value_bytes)
    started = time.perf_counter()
    produce_records(
        broker.bootstrap,
        topic,
        (value for _ in range(records)),
        partitions=partitions,
        settings={"linger.ms": 20, "queue.buffering.max.kbytes": 1048576},
    )
    return time.perf_counter() - started


def sources_for(
    bootstrap: str, topic: str, batch_size: int
) -> dict[str, Callable[[], Source[Any]]]:
    return {
        "ticketflow": lambda: KafkaSource(bootstrap, topic, drain=True, batch_size=batch_size),
        "bytewax": lambda: BundledKafkaSource(
            [bootstrap], [topic], tail=False, batch_size=batch_size
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per topic")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1024, 10240], help="value sizes in bytes"
    )
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic")
    parser.add_argument("--batch-size", type=int, default=500, help="batch size of both sources")
    parser.add_argument("--repeat", type=int, default=3, help="runs per source; the best counts")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with TansuBroker() as broker:
        for value_bytes in arguments.sizes:
            topic = f"bench-{value_bytes}"
            fill_seconds = fill_topic(
                broker, topic, arguments.records, value_bytes, arguments.partitions
            )
            print(
                f"{value_bytes} B values: produced {arguments.records} records in "
                f"{fill_seconds:.1f} s ({arguments.records / fill_seconds:,.0f}/s)"
            )

            best: dict[str, Measurement] = {}
            factories = sources_for(broker.bootstrap, topic, arguments.batch_size)
            for _ in range(arguments.repeat):
                for name, factory in factories.items():
                    measured = drain_once(name, factory(), arguments.records, value_bytes)
                    if name not in best or measured.seconds < best[name].seconds:
                        best[name] = measured

            for measured in best.values():
                megabytes = measured.records * value_bytes / measured.seconds / 1e6
                print(
                    f"  {measured.source:<10} {measured.records_per_second:>10,.0f} records/s "
                    f"({megabytes:,.0f} MB/s, {measured.seconds:.2f} s); first record after "
                    f"{measured.first_record_seconds:.2f} s, then "
                    f"{measured.steady_records_per_second:,.0f} records/s"
                )
            ratio = best["ticketflow"].records_per_second / best["bytewax"].records_per_second
            print(f"  ticketflow / bytewax: {ratio:.2f}")


if __name__ == "__main__":
    main()
