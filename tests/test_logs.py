"""Log lines: JSON lines with context fields, and no personal data or secrets at the default setting."""

from __future__ import annotations

import doctest
import email
import email.policy
import io
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from email.utils import getaddresses
from pathlib import Path

import pytest

import ticketflow.logs
from ticketflow.config import LoggingSettings
from ticketflow.logs import Masker, configure_logging, luhn_valid

SAMPLE = Path(__file__).resolve().parents[1] / "corpus" / "sample"


@pytest.fixture
def capture():
    """Configure logging into a string buffer; yield a function that applies settings and returns the buffer."""
    handlers = []

    def apply(settings: LoggingSettings, verbose: bool = True) -> io.StringIO:
        buffer = io.StringIO()
        handlers.append(configure_logging(settings, verbose=verbose, stream=buffer))
        return buffer

    yield apply
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


# -- masking ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, text, secret",
    [
        ("addresses", "from Alice <alice.smith+tag@mail.example.com>", "alice.smith+tag@mail.example.com"),
        ("addresses", "to BOB@Example.ORG and carol@example.net", "BOB@Example.ORG"),
        ("addresses", 'quoted "john doe"@example.com', '"john doe"@example.com'),
        ("addresses", "jörg@例え.jp wrote", "jörg@"),
        ("tokens", "Authorization: Bearer abcDEF123456.xyz", "abcDEF123456.xyz"),
        ("tokens", "api_key=q8Fz0v9xLmN2", "q8Fz0v9xLmN2"),
        ("tokens", "password: 'hunter2'", "hunter2"),
        ("tokens", '{"token": "tk_7f3a9b"}', "tk_7f3a9b"),
        ("tokens", "key sk_live_4eC39HqLyjWDarjtT1zdp7dc leaked", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        ("tokens", "AKIAIOSFODNN7EXAMPLE in a header", "AKIAIOSFODNN7EXAMPLE"),
        ("tokens", "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
        ("cards", "card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
        ("cards", "card 5500-0000-0000-0004 declined", "5500-0000-0000-0004"),
        ("cards", "amex 378282246310005", "378282246310005"),
        ("urls", "redis://ticketflow:s3cr3t-pass@redis.example.com:6379/0", "s3cr3t-pass"),
    ],
)
def test_masker_hides_each_kind(kind, text, secret):
    assert secret in text
    assert secret not in Masker([kind]).mask(text)
    assert secret not in Masker().mask(text)


def test_masker_keeps_what_identifies_no_one():
    masker = Masker()
    assert masker.mask("from alice@example.com") == "from ***@example.com"
    assert masker.mask("card 4111 1111 1111 1111") == "card ****1111"
    assert masker.mask("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert masker.mask("Bearer abcdefgh") == "Bearer ***"


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 failed",  # fails the Luhn check
        "offset 123456789012",  # 12 digits, shorter than any card
        "token rotation failed for the API key",
        "kafka://k1:9092,k2:9092/mail#2@1834",
        "read 34 messages in 0.21 s",
    ],
)
def test_masker_leaves_ordinary_text(text):
    assert Masker().mask(text) == text


def test_masker_masks_only_chosen_kinds():
    text = "alice@example.com paid with 4111111111111111"
    assert Masker(["cards"]).mask(text) == "alice@example.com paid with ****1111"
    assert Masker([]).mask(text) == text


def test_masker_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown mask kind\(s\) \['emails'\]; use addresses, tokens"):
        Masker(["emails"])


def test_luhn_check():
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_logs_docstring_examples():
    assert doctest.testmod(ticketflow.logs).failed == 0


# -- formats ---------------------------------------------------------------------------


def test_json_line_has_fields_and_context(capture):
    buffer = capture(LoggingSettings(format="json"))
    logging.getLogger("ticketflow.test").info(
        "stored reply from %s", "alice@example.com",
        extra={"event_id": "evt_1", "ticket_id": "t_9", "source": "corpus/a.eml"},
    )
    document = json.loads(buffer.getvalue())
    assert document["level"] == "INFO"
    assert document["logger"] == "ticketflow.test"
    assert document["message"] == "stored reply from ***@example.com"
    assert (document["event_id"], document["ticket_id"], document["source"]) == ("evt_1", "t_9", "corpus/a.eml")
    assert document["time"].endswith("Z")
    assert datetime.fromisoformat(document["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0


def test_json_line_leaves_out_absent_context(capture):
    buffer = capture(LoggingSettings(format="json"))
    logging.getLogger("ticketflow.test").warning("plain")
    document = json.loads(buffer.getvalue())
    assert set(document) == {"time", "level", "logger", "message"}


def test_json_exception_is_one_masked_line(capture):
    buffer = capture(LoggingSettings(format="json"))
    try:
        raise ValueError("cannot reach redis://u:topsecret@h/0 for bob@example.com")
    except ValueError:
        logging.getLogger("ticketflow.test").exception("failed")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert "ValueError" in document["exception"]
    assert "topsecret" not in document["exception"]
    assert "bob@example.com" not in document["exception"]


def test_text_format_is_masked(capture):
    buffer = capture(LoggingSettings())
    logging.getLogger("ticketflow.test").warning("from %s", "alice@example.com")
    line = buffer.getvalue()
    assert "WARNING ticketflow.test: from ***@example.com" in line


def test_level_and_verbose(capture):
    buffer = capture(LoggingSettings(level="error"), verbose=False)
    logging.getLogger("ticketflow.test").warning("hidden")
    assert buffer.getvalue() == ""
    buffer = capture(LoggingSettings(level="error"), verbose=True)
    logging.getLogger("ticketflow.test").debug("shown")
    assert "shown" in buffer.getvalue()


def test_configure_replaces_own_handler_only(capture):
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        capture(LoggingSettings())
        capture(LoggingSettings(format="json"))
        ours = [handler for handler in root.handlers if getattr(handler, "_ticketflow", False)]
        assert len(ours) == 1
        assert other in root.handlers
    finally:
        root.removeHandler(other)


# -- the sample corpus ------------------------------------------------------------------


def corpus_addresses() -> set[str]:
    """Every address in the From, To and Cc headers of the sample corpus, lowercased."""
    addresses = set()
    for path in sorted(SAMPLE.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        values = [str(value) for name in ("From", "To", "Cc") for value in message.get_all(name, [])]
        addresses |= {address.lower() for _, address in getaddresses(values) if "@" in address}
    return addresses


def run_sample(tmp_path: Path, extra_config: str = "") -> str:
    """Run the sample corpus through the CLI with -v; return everything it wrote."""
    config = tmp_path / "ticketflow.toml"
    config.write_text((SAMPLE / "ticketflow.toml").read_text() + extra_config)
    result = subprocess.run(
        [sys.executable, "-m", "ticketflow.cli", "-v", "run", "--input", str(SAMPLE), "--config", str(config),
         "--store", f"sqlite:///{tmp_path / 't.db'}", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_corpus_has_addresses_to_hide():
    assert len(corpus_addresses()) >= 20


def test_unmasked_verbose_run_would_leak(tmp_path):
    output = run_sample(tmp_path, "\n[logging]\nmask = []\n").lower()
    leaked = {address for address in corpus_addresses() if address in output}
    assert leaked, "the verbose run logged no address, so the masking test below proves nothing"


def test_default_verbose_run_hides_every_address(tmp_path):
    output = run_sample(tmp_path).lower()
    assert "stored created" in output, "the verbose run logged no per-message line"
    leaked = sorted(address for address in corpus_addresses() if address in output)
    assert leaked == []


def test_json_verbose_run_is_json_lines_without_addresses(tmp_path):
    output = run_sample(tmp_path, '\n[logging]\nformat = "json"\n')
    log_lines = [line for line in output.splitlines() if line.startswith("{")]
    assert len(log_lines) > 30
    documents = [json.loads(line) for line in log_lines]
    stored = [document for document in documents if document["message"].startswith("stored ")]
    assert stored and all("event_id" in document and "source" in document for document in stored)
    leaked = sorted(address for address in corpus_addresses() if address in output.lower())
    assert leaked == []

