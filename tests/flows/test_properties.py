"""Property: whatever bytes come in, the flow finishes and every input lands in one outcome."""

from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from ticketflow.config import Settings
from ticketflow.connectors.records import RecordsSource
from ticketflow.connectors.store import SqliteStore
from ticketflow.model import RawMessage
from ticketflow.runner import run_flow

SAMPLE = Path(__file__).resolve().parents[2] / "corpus" / "sample"
VALID = [path.read_bytes() for path in sorted(SAMPLE.glob("*.eml"))]


@st.composite
def mutated_mail(draw):
    raw = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["flip", "cut", "duplicate_line", "insert"]))
        if not raw:
            break
        position = draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del raw[position:]
        elif action == "duplicate_line":
            start = raw.rfind(b"\n", 0, position) + 1
            end = raw.find(b"\n", position)
            end = len(raw) if end == -1 else end + 1
            raw[start:start] = raw[start:end]
        else:
            raw[position:position] = draw(st.binary(min_size=1, max_size=40))
    return bytes(raw)


inputs = st.lists(st.one_of(st.binary(max_size=300), mutated_mail()), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raws=inputs)
def test_flow_accounts_for_every_input(raws, tmp_path_factory):
    store = SqliteStore(tmp_path_factory.mktemp("prop") / "t.db")
    records = [RawMessage(source=f"/fuzz/{index}", raw=raw) for index, raw in enumerate(raws)]
    summary = run_flow("fuzz", Settings(), store, source=RecordsSource(records))

    assert summary.read == len(raws)
    assert summary.balanced(), summary.as_dict()
    stored = sum(len(ticket["messages"]) for ticket in store.tickets())
    assert stored <= summary.tickets_created + summary.replies_threaded
    assert len(store.dead_letters()) <= summary.dead_letters
    store.close()
