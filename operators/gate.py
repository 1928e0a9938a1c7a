"""Which mail may open a ticket, and which ticket is held for review.

`gate` combines four pure checks into a `GateDecision`:

- `automatic_reason`: mail that a program sent on its own (RFC 3834 auto-replies,
  bounces, reports, echoes of our own mail). It never opens a ticket, but the thread
  stage may still attach it to the ticket it replies to, as a message of kind
  "auto_reply".
- `bulk_reason`: list and bulk mail, handled by `[gate] bulk_policy`.
- `review_reasons`: authentication and spam results that hold a new ticket in
  status "review".

`AutoReplyLimiter` is the one stateful piece: it caps how many automatic messages
per sender the flow lets through in a window of event time, so two autoresponders
replying to each other cannot grow a ticket without end.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import quote, unquote
from typing import Any, Literal

from ticketflow.operators.enrich import (
    HeaderMap,
    address_domain,
    envelope_field,
    header_map,
    is_inbound_address,
)

from ticketflow.config import GateSettings, RoutingSettings, ThreadingSettings

MessageKind = Literal["original", "reply", "auto_reply"]

# Results of RFC 8601 Authentication-Results that count as failed. An SPF "softfail"
# counts, because with it the domain owner states that the host is probably not
# authorized. A DKIM "none" does not, because it only means the message is unsigned.
_SPF_FAILED = frozenset({"fail", "softfail"})
_DKIM_FAILED = frozenset({"fail"})
# DMARC results that are a verdict. "none", "temperror" and "permerror" are not.
_DMARC_VERDICTS = frozenset({"pass", "fail"})

# Local parts that only mail systems send from. "postmaster" is also a person's
# mailbox, so it counts only together with a null Return-Path.
_MAILER_DAEMON = "mailer-daemon"
_POSTMASTER = "postmaster"

# Header values that switch a yes/no header off.
_NEGATIVE_VALUES = frozenset({"no", "false", "0", "off"})


@dataclass(frozen=True)
class GateDecision:
    """What the gate found about one message.

    `automatic` is why the message is automatic ("auto_submitted", "auto_reply",
    "bounce", "report", "echo") or None. `bulk` is "list", "bulk" or None.
    `review_reasons` lists why a ticket it opens is held for review, in a stable
    order, "bulk" last under the "review" policy. `suppress` is True when
    `bulk_policy` is "suppress" and the message is bulk. `auto_response_suppressed`
    is True when X-Auto-Response-Suppress requests that no auto-reply be sent.
    """

    automatic: str | None = None
    bulk: str | None = None
    review_reasons: tuple[str, ...] = ()
    suppress: bool = False
    auto_response_suppressed: bool = False

    @property
    def may_open_ticket(self) -> bool:
        """Whether the message may open a ticket when it threads onto none.

        A message that may not open one may still join the ticket it threads onto.
        """
        return self.automatic is None and not self.suppress

    @property
    def no_ticket_reason(self) -> str | None:
        """Why the message may not open a ticket: the automatic or bulk reason, or None."""
        if self.automatic:
            return self.automatic
        if self.suppress:
            return self.bulk
        return None

    @property
    def status(self) -> Literal["open", "review"]:
        """The status of a ticket this message opens."""
        return "review" if self.review_reasons else "open"

    @property
    def may_auto_respond(self) -> bool:
        """Whether an auto-reply (an acknowledgment) may be sent to the sender.

        RFC 3834 section 2 tells responders not to reply to automatic, list and bulk
        mail, and Microsoft's X-Auto-Response-Suppress requests the same per message.
        """
        return self.automatic is None and self.bulk is None and not self.auto_response_suppressed

    def message_kind(self, is_reply: bool) -> MessageKind:
        """Return the kind of the message on its ticket.

        `is_reply` is the thread stage's finding that the message joins an existing
        ticket. An automatic message is always "auto_reply", because it can reach a
        ticket only by joining one.
        """
        if self.automatic:
            return "auto_reply"
        return "reply" if is_reply else "original"


def gate(
    event: Mapping[str, Any],
    routing: RoutingSettings,
    threading: ThreadingSettings,
    gate_settings: GateSettings,
    *,
    headers: HeaderMap | None = None,
) -> GateDecision:
    """Return the gate's decision for one event, with `bulk_policy` applied.

    Under "review", bulk mail gets the review reason "bulk". Under "suppress", it
    may not open a ticket. Under "open", it is treated like any other mail.
    `headers` is `header_map(event)` when the caller already built it.
    """
    if headers is None:
        headers = header_map(event)
    bulk = bulk_reason(event, headers=headers)
    reasons = review_reasons(event, gate_settings)
    if bulk and gate_settings.bulk_policy == "review":
        reasons.append("bulk")

    return GateDecision(
        automatic=automatic_reason(event, routing, threading, headers=headers),
        bulk=bulk,
        review_reasons=tuple(reasons),
        suppress=bool(bulk) and gate_settings.bulk_policy == "suppress",
        auto_response_suppressed=_auto_response_suppressed(headers),
    )


# -- review -------------------------------------------------------------------------


def review_reasons(event: Mapping[str, Any], gate_settings: GateSettings) -> list[str]:
    """Return why a ticket opened by this event is held for review, in this order.

    - "dmarc_fail": DMARC failed.
    - "spf_dkim_fail": SPF failed (fail or softfail) and DKIM failed, and DMARC gave
      no verdict (absent, "none", or an error). SPF failing alone is no reason,
      because forwarded mail fails SPF while its DKIM signature still holds.
    - "spam_flag": the spam filter flagged the message.
    - "spam_score": the spam score is at or above `spam_threshold`.
    """
    spf = _auth_result(event, "spf")
    dkim = _auth_result(event, "dkim")
    dmarc = _auth_result(event, "dmarc")
    reasons = []

    if dmarc == "fail":
        reasons.append("dmarc_fail")
    if dmarc not in _DMARC_VERDICTS and spf in _SPF_FAILED and dkim in _DKIM_FAILED:
        reasons.append("spf_dkim_fail")

    spam = event.get("spam")
    if not isinstance(spam, Mapping):
        spam = {}
    if spam.get("is_spam") is True:
        reasons.append("spam_flag")
    score = _number(spam.get("score"))
    if score is not None and score >= gate_settings.spam_threshold:
        reasons.append("spam_score")

    return reasons


def _auth_result(event: Mapping[str, Any], method: str) -> str:
    """Return the first word of one authentication result, lowercased; "" when absent."""
    results = event.get("authentication")
    value = results.get(method) if isinstance(results, Mapping) else None
    words = value.split() if isinstance(value, str) else []
    return words[0].lower() if words else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# -- automatic mail -----------------------------------------------------------------


def automatic_reason(
    event: Mapping[str, Any],
    routing: RoutingSettings,
    threading: ThreadingSettings,
    *,
    headers: HeaderMap | None = None,
) -> str | None:
    """Return why a message is automatic and may never open a ticket, or None.

    Checked in this order, the first match is returned:

    - "bounce": a delivery status notification (RFC 3464: Content-Type
      multipart/report with report-type=delivery-status), an X-Failed-Recipients
      header (Exim), mail from MAILER-DAEMON, or mail from postmaster with a null
      Return-Path ("<>").
    - "report": any other multipart/report, such as a read receipt (RFC 8098) or an
      abuse feedback report (RFC 5965).
    - "auto_submitted": an Auto-Submitted header whose value is not "no" (RFC 3834).
    - "auto_reply": Precedence: auto_reply, or an X-Autoreply or X-Autorespond header
      whose value is not "no". X-Auto-Response-Suppress alone does not count, because
      it only requests that no auto-reply be sent, and many messages from people and
      bulk mailers carry it too.
    - "echo": mail that two systems may be bouncing between each other without any
      auto-reply header. From is one of our own inbound addresses, or In-Reply-To or
      References names a message id on `threading.own_message_id_domains`.

    The "echo" rule also matches a person replying to one of our notifications. The
    thread stage still attaches such a reply to its ticket when it finds one (by
    header, ticket key or reply address). When it finds none, the reply opens nothing.
    `headers` is `header_map(event)` when the caller already built it.
    """
    if headers is None:
        headers = header_map(event)
    content_type = _content_type(headers.get("content-type"))

    if _is_bounce(event, headers, content_type):
        return "bounce"
    if content_type == "multipart/report":
        return "report"
    if _is_auto_submitted(headers):
        return "auto_submitted"
    if _is_auto_reply(headers):
        return "auto_reply"
    if _is_echo(event, routing, threading):
        return "echo"
    return None


def _is_bounce(event: Mapping[str, Any], headers: HeaderMap, content_type: str) -> bool:
    report_type = _report_type(headers.get("content-type"))
    if content_type == "multipart/report" and report_type == "delivery-status":
        return True
    if headers.get("x-failed-recipients"):
        return True

    sender = _sender(event)
    local_part = sender.rpartition("@")[0] if "@" in sender else sender
    if local_part == _MAILER_DAEMON:
        return True
    return local_part == _POSTMASTER and _has_null_return_path(headers)


def _content_type(value: str | None) -> str:
    """Return the lowercased media type of a Content-Type value, or "" when absent.

    Reads it as the stdlib's `email.message.Message.get_content_type` does (compat32):
    the text before the first ";", stripped, and "text/plain" when that is not one
    "type/subtype" pair.
    """
    if not value:
        return ""
    media_type = value.partition(";")[0].strip().lower()
    return media_type if media_type.count("/") == 1 else "text/plain"


def _report_type(value: str | None) -> str:
    """Return the report-type parameter of a Content-Type value, lowercased, or "" when absent.

    Reads it as the stdlib's `email.message.Message.get_param("report-type")` does
    (compat32): the first parameter of that name, its quotes removed. RFC 2231
    forms ("report-type*=…") never match, because the stdlib only joins parameter
    names of letters, digits and "_".
    """
    if not value or "report-type" not in value.lower():
        return ""

    for position, segment in enumerate(_parameter_segments(value)):
        name, _, raw = segment.partition("=")
        if name.strip().lower() != "report-type":
            continue
        raw = raw.strip()
        if position > 0:
            # The stdlib unquotes a parameter value and quotes it again before
            # `get_param` unquotes it. Doing the same keeps the result identical.
            raw = f'"{quote(unquote(raw))}"'
        return unquote(raw).strip().lower()
    return ""


def _parameter_segments(value: str) -> list[str]:
    """Split a header value at each ";" outside a quoted string, as compat32 does.

    A ";" counts as a separator when an even number of unescaped '"' precede it
    within the segment.
    """
    segments = []
    rest = value
    while True:
        end = rest.find(";")
        while end > 0 and (rest.count('"', 0, end) - rest.count('\\"', 0, end)) % 2:
            end = rest.find(";", end + 1)
        if end < 0:
            segments.append(rest.strip())
            return segments
        segments.append(rest[:end].strip())
        rest = rest[end + 1 :]


def _has_null_return_path(headers: HeaderMap) -> bool:
    value = headers.get("return-path")
    if value is None:
        return False
    # "<>", "< >" and the "<<>>" that some servers write all mean a null path.
    return not value.strip().strip("<> \t")


def _is_auto_submitted(headers: HeaderMap) -> bool:
    """Tell whether Auto-Submitted is present with a value other than "no".

    The value's first token counts, so "auto-replied; owner-email=…" and
    "auto-generated (vacation)" are automatic. An empty value is malformed and does
    not count.
    """
    token = _first_token(headers.get("auto-submitted"))
    return bool(token) and token != "no"


def _is_auto_reply(headers: HeaderMap) -> bool:
    if _first_token(headers.get("precedence")) == "auto_reply":
        return True

    for name in ("x-autoreply", "x-autorespond"):
        token = _first_token(headers.get(name))
        if token and token not in _NEGATIVE_VALUES:
            return True
    return False


def _is_echo(
    event: Mapping[str, Any], routing: RoutingSettings, threading: ThreadingSettings
) -> bool:
    if is_inbound_address(_sender(event), routing):
        return True

    own_domains = {
        domain.strip().rstrip(".").lower() for domain in threading.own_message_id_domains
    }
    if not own_domains:
        return False
    return any(
        _message_id_domain(message_id) in own_domains
        for message_id in _parent_ids(event, threading.max_references)
    )


def _parent_ids(event: Mapping[str, Any], max_references: int) -> list[str]:
    ids = []
    in_reply_to = envelope_field(event, "in_reply_to")
    if isinstance(in_reply_to, str):
        ids.append(in_reply_to)

    references = envelope_field(event, "references")
    if isinstance(references, list):
        ids.extend(ref for ref in references[:max_references] if isinstance(ref, str))
    return ids


def _message_id_domain(message_id: str) -> str:
    return address_domain(message_id.strip().strip("<>"))


def _auto_response_suppressed(headers: HeaderMap) -> bool:
    """Tell whether X-Auto-Response-Suppress requests that no auto-reply be sent.

    The header lists what to suppress ("OOF, AutoReply", "All"), and "None" suppresses
    nothing. Only "All" and "AutoReply" cover an acknowledgment from a helpdesk.
    """
    value = headers.get("x-auto-response-suppress") or ""
    requested = {word.strip().casefold() for word in value.split(",")}
    return bool(requested & {"all", "autoreply"})


# -- bulk mail ----------------------------------------------------------------------


def bulk_reason(event: Mapping[str, Any], *, headers: HeaderMap | None = None) -> str | None:
    """Return "list" or "bulk" for mailing-list and bulk mail, else None.

    - "list": a List-Id header (RFC 2919), or Precedence: list.
    - "bulk": Precedence: bulk or junk, or a List-Unsubscribe header without
      List-Id. Newsletters and marketing mail carry List-Unsubscribe; a person's
      message does not, unless a mailing list relayed it, and then List-Id is there.

    `headers` is `header_map(event)` when the caller already built it.
    """
    if headers is None:
        headers = header_map(event)
    precedence = _first_token(headers.get("precedence"))

    if (headers.get("list-id") or "").strip() or precedence == "list":
        return "list"
    if precedence in ("bulk", "junk"):
        return "bulk"
    if (headers.get("list-unsubscribe") or "").strip():
        return "bulk"
    return None


def _first_token(value: str | None) -> str:
    """Return the value's first word before any ";" or "(", lowercased; "" when none."""
    head = (value or "").split(";", 1)[0].split("(", 1)[0]
    words = head.split()
    return words[0].lower() if words else ""


def _sender(event: Mapping[str, Any]) -> str:
    sender = envelope_field(event, "from")
    return sender.strip().lower() if isinstance(sender, str) else ""


# -- rate limit ---------------------------------------------------------------------


class AutoReplyLimiter:
    """Allow at most `limit` automatic messages per sender in any `window_seconds`.

    Time is the event time passed to `allow`, never a clock, so a replayed corpus
    gets the same results as the live run. A message counts in the window
    (at - window, at]. A refused message is not counted, so a sender that keeps
    sending is let through again as soon as its oldest counted message leaves the
    window. A window of 0 seconds therefore limits nothing.

    Memory is bounded: a sender is forgotten once its last counted message leaves
    the window (checked on every call), and beyond `max_senders` the sender counted
    least recently is forgotten first, which can let it through early.

    Event times may arrive out of order. A late message is counted against every
    remembered message newer than its own time minus the window, including those
    later than itself, so lateness can refuse mail but never lets more through.
    An expired sender that a late message left behind a live one is forgotten when
    that live one expires.
    """

    def __init__(self, limit: int, window_seconds: float, max_senders: int = 100_000) -> None:
        """Raise ValueError for a negative limit or window, or fewer than one sender."""
        if limit < 0:
            raise ValueError(
                f"invalid auto-reply limit {limit}: use 0 or more messages per window "
                "([gate] auto_reply_limit)"
            )
        if not window_seconds >= 0:
            raise ValueError(
                f"invalid auto-reply window {window_seconds}: use 0 or more seconds "
                "([gate] auto_reply_window)"
            )
        if max_senders < 1:
            raise ValueError(f"invalid max_senders {max_senders}: use 1 or more")

        self.limit = limit
        self.window = timedelta(seconds=window_seconds)
        self.max_senders = max_senders
        # Sender → times of its counted messages; the sender counted least recently first.
        self._counted: OrderedDict[str, list[datetime]] = OrderedDict()

    @classmethod
    def from_settings(cls, gate_settings: GateSettings) -> AutoReplyLimiter:
        """Build a limiter from `[gate] auto_reply_limit` and `auto_reply_window`."""
        return cls(gate_settings.auto_reply_limit, gate_settings.auto_reply_window)

    def allow(self, sender: str, at: datetime) -> bool:
        """Count one automatic message from `sender` at event time `at`, if allowed.

        Returns False without counting it when the sender already has `limit`
        messages in the window ending at `at`. Raises ValueError when `at` is naive.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"event time {at.isoformat()} has no timezone; pass an aware datetime")

        key = sender.strip().lower()
        cutoff = at - self.window
        self._forget_expired(cutoff)

        times = [moment for moment in self._counted.get(key, ()) if moment > cutoff]
        if len(times) >= self.limit:
            self._keep_in_place(key, times)
            return False

        times.append(at)
        self._counted[key] = times
        self._counted.move_to_end(key)
        self._forget_least_recent()
        return True

    def __len__(self) -> int:
        """Return the number of senders remembered."""
        return len(self._counted)

    def _forget_expired(self, cutoff: datetime) -> None:
        # Senders are ordered by their last counted message. With in-order event
        # times the expired ones gather at the front, so stop at the first live one.
        while self._counted:
            sender, times = next(iter(self._counted.items()))
            if max(times) > cutoff:
                return
            del self._counted[sender]

    def _keep_in_place(self, sender: str, times: list[datetime]) -> None:
        # A refused message does not move its sender, which keeps the order above.
        if times:
            self._counted[sender] = times
        else:
            self._counted.pop(sender, None)

    def _forget_least_recent(self) -> None:
        while len(self._counted) > self.max_senders:
            self._counted.popitem(last=False)
