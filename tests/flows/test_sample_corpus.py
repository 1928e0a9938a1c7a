"""The demo corpus gives the tickets its README promises, from the folder and from the mbox."""

from collections import Counter
from pathlib import Path

import pytest

from ticketflow.config import load_settings
from ticketflow.connectors.store import SqliteStore
from ticketflow.runner import run_corpus

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
EXPECTED_TOTALS = {"read": 34, "fanned_out": 1, "tickets_created": 23, "replies_threaded": 9,
                   "duplicates": 1, "suppressed": 2, "dead_letters": 0, "review": 3}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    store = SqliteStore(tmp_path_factory.mktemp("sample") / "tickets.db")
    settings = load_settings(CORPUS / "sample" / "ticketflow.toml")
    summary = run_corpus(CORPUS / "sample", settings, store)
    return summary, store


def test_sample_totals_match_readme(sample_run):
    summary, _ = sample_run
    assert summary.as_dict() == EXPECTED_TOTALS


def test_sample_tickets_per_tenant(sample_run):
    _, store = sample_run
    assert Counter(ticket["tenant"] for ticket in store.tickets()) == {"acme": 7, "globex": 10, "initech": 6}


def test_sample_payment_thread(sample_run):
    _, store = sample_run
    ticket = next(t for t in store.tickets() if t["subject"] == "API timeout on POST /charges")
    assert (ticket["priority"], ticket["component"], ticket["environment"]) == ("P1", "payments", "prod-us-west-2")
    assert [m["kind"] for m in ticket["messages"]] == ["original", "auto_reply", "reply", "reply"]
    assert [a["filename"] for a in ticket["messages"][0]["attachments"]] == ["charges-504.log"]


def test_sample_foreign_key_joins_colleague_only(sample_run):
    _, store = sample_run
    keyed = [t for t in store.tickets() if t["external_refs"] == ["SUP-42"]]
    assert sorted(len(t["messages"]) for t in keyed) == [1, 2]


def test_sample_review_reasons(sample_run):
    _, store = sample_run
    reasons = sorted(tuple(t["review_reasons"]) for t in store.tickets() if t["status"] == "review")
    assert reasons == [("bulk",), ("dmarc_fail",), ("spam_flag", "spam_score")]


def test_mbox_gives_the_same_tickets(sample_run, tmp_path):
    _, folder_store = sample_run
    store = SqliteStore(tmp_path / "mbox.db")
    summary = run_corpus(CORPUS / "sample.mbox", load_settings(CORPUS / "sample" / "ticketflow.toml"), store)
    assert summary.as_dict() == EXPECTED_TOTALS

    def shape(tickets):
        return sorted((t["ticket_id"], t["subject"], len(t["messages"]), t["status"]) for t in tickets)

    assert shape(store.tickets()) == shape(folder_store.tickets())


def test_storing_attachments_later_keeps_messages_recognized(tmp_path):
    """Turning on the attachment store rewrites HTML links; the same mail is still a duplicate."""
    from ticketflow.config import settings_from_mapping

    store = SqliteStore(tmp_path / "t.db")
    base = load_settings(CORPUS / "sample" / "ticketflow.toml")
    run_corpus(CORPUS / "sample", base, store)
    before = store.tickets()

    storing = settings_from_mapping({
        "routing": {"inbound_domains": list(base.routing.inbound_domains)},
        "trust": {"authserv_ids": list(base.trust.authserv_ids)},
        "attachments": {"store": str(tmp_path / "files"), "base_url": "https://files.example.com"},
    })
    run_corpus(CORPUS / "sample", storing, store)

    def shape(tickets):
        return [(t["ticket_id"], [m["message_id"] for m in t["messages"]]) for t in tickets]

    assert shape(store.tickets()) == shape(before)
