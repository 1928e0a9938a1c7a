from datetime import UTC, datetime, timedelta

from ticketflow.operators.dedupe import DedupeWindow, content_hash, dedupe_key
from tests.factories import make_event

T0 = datetime(2026, 4, 30, 12, 0, tzinfo=UTC)


def test_second_delivery_is_duplicate():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    assert window.check("acme", "k1", "/a.eml", T0) == "new"
    assert window.check("acme", "k1", "/b.eml", T0) == "duplicate"


def test_reread_of_same_source_passes():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "k1", "/a.eml", T0)
    window.commit("acme", "k1")
    assert window.check("acme", "k1", "/a.eml", T0) == "reread"


def test_same_key_other_tenant_is_new():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "k1", "/a.eml", T0)
    assert window.check("globex", "k1", "/a.eml", T0) == "new"


def test_mark_expires_with_event_time():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "k1", "/a.eml", T0)
    window.commit("acme", "k1")
    window.check("acme", "other", "/c.eml", T0 + timedelta(hours=2))
    assert window.check("acme", "k1", "/b.eml", T0 + timedelta(hours=2)) == "new"


def test_window_is_bounded_in_count():
    window = DedupeWindow(window_seconds=10**9, max_entries=3)
    for number in range(10):
        window.check("acme", f"k{number}", "/a.eml", T0)
    assert len(window) == 3
    assert window.check("acme", "k0", "/b.eml", T0) == "new"
    assert window.check("acme", "k9", "/b.eml", T0) == "duplicate"


def test_snapshot_holds_only_committed_marks():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "pending", "/a.eml", T0)
    window.check("acme", "written", "/b.eml", T0)
    window.commit("acme", "written")

    restored = DedupeWindow(window_seconds=3600, max_entries=100)
    restored.restore(window.snapshot())
    assert restored.check("acme", "written", "/c.eml", T0) == "duplicate"
    assert restored.check("acme", "pending", "/c.eml", T0) == "new"


def test_forget_lets_a_retry_pass():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "k1", "/a.eml", T0)
    window.forget("acme", "k1")
    assert window.check("acme", "k1", "/b.eml", T0) == "new"


def test_content_hash_ignores_transport_fields():
    first = make_event("<m1@x>", source="/a.eml", headers={"Received": "from a"})
    second = make_event("<m1@x>", source="/b.eml", headers={"Received": "from b"})
    assert content_hash(first) == content_hash(second)
    assert dedupe_key(first) == dedupe_key(second)


def test_content_hash_sees_body_change():
    first = make_event("<m1@x>", text="one")
    second = make_event("<m1@x>", text="two")
    assert dedupe_key(first) != dedupe_key(second)


def test_late_message_still_catches_its_redelivery():
    window = DedupeWindow(window_seconds=3600, max_entries=100)
    window.check("acme", "newer", "/n.eml", T0 + timedelta(days=2))
    assert window.check("acme", "old", "/a.eml", T0) == "new"
    assert window.check("acme", "old", "/b.eml", T0) == "duplicate"


def test_content_hash_ignores_how_the_html_was_governed():
    from tests.factories import make_event
    from ticketflow.operators.dedupe import content_hash

    event = make_event("<a@x>")
    event["html"] = '<p>It times out.</p><img src="cid:chart@x">'
    governed = {**event, "html": '<p>It times out.</p><img src="https://files.example/ab/cd/ef">'}
    assert content_hash(event) == content_hash(governed)


def test_content_hash_of_html_only_mail_reads_its_text():
    from tests.factories import make_event
    from ticketflow.operators.dedupe import content_hash

    first = {**make_event("<a@x>", text=""), "html": "<p>Refund <b>twice</b></p>"}
    same_text = {**first, "html": "<div>Refund twice</div><script>track()</script>"}
    other_text = {**first, "html": "<p>Refund once</p>"}
    assert content_hash(first) == content_hash(same_text)
    assert content_hash(first) != content_hash(other_text)
