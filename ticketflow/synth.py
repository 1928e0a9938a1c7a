"""Write a realistic synthetic support-mail corpus: the same seed gives the same bytes.

`synthesize(count, seed, out)` writes `count` messages as an mboxrd file or a
folder of ``.eml`` files, one message at a time, so a corpus of a million
messages never sits in memory. `iter_messages` yields the same messages, each
with what it is and the outcome the flow should give it, for benchmarks that
feed the flow from memory.

What the corpus holds, in proportions set by a `Mix` (defaults in brackets):

- **kinds** of message: new tickets [50 %], replies [30 %], duplicates [5 %],
  automatic replies [7 %] and spam [8 %];
- **replies** thread by In-Reply-To and References [50 %], In-Reply-To only
  [20 %], References only [15 %], or only by a ``[SUP-123]`` ticket key in the
  subject [15 %]; a few arrive before their parent (`reply_before_parent`);
- **duplicates** are earlier messages delivered again through the backup MX:
  the same bytes under one more Received line;
- **automatic replies** are out-of-office replies with Auto-Submitted, either
  threaded to the ticket a colleague was copied on, or to nothing;
- **spam** carries SpamAssassin's X-Spam-Flag and X-Spam-Status;
- several **tenants** on support.example.com (Delivered-To, plus-addresses, and
  a few messages to two tenants at once);
- **charsets** and encoded words: US-ASCII, UTF-8 (8bit, quoted-printable or
  base64), ISO-8859-1 quoted-printable, ISO-2022-JP and KOI8-R;
- **parts**: HTML alternatives, inline images (multipart/related with
  ``cid:``) and attachments of log-normal sizes, for about 10 KB per message on
  average with the defaults.

Determinism: every choice comes from one `random.Random(seed)`, and times come
from a fixed start (`DEFAULT_START` unless given) plus seeded gaps; nothing
reads the clock. The same count, seed, mix and start give the same bytes.

Expected outcomes assume the default `[threading]`, `[dedupe]` and `[gate]`
settings and a run that reads the whole corpus: each message's `outcome` is
what every one of its tenant copies should end as, and `SynthSummary.expected`
adds them up into the counts `ticketflow run --json` prints.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import html
import json
import math
import random
import re
import struct
import sys
import tomllib
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.charset import Charset
from email.header import Header
from email.utils import format_datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

__all__ = [
    "DEFAULT_START",
    "Mix",
    "MixError",
    "SynthMessage",
    "SynthSummary",
    "iter_messages",
    "load_mix",
    "mix_from_mapping",
    "synthesize",
]

DEFAULT_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

KINDS = ("new", "reply", "duplicate", "auto_reply", "spam")
REPLY_STYLES = ("full", "in_reply_to", "references", "subject_key")
CHARSETS = ("us-ascii", "utf-8", "iso-8859-1", "iso-2022-jp", "koi8-r")

Format = Literal["mbox", "folder"]
Outcome = Literal["created", "threaded", "duplicate", "suppressed"]

INBOUND_DOMAIN = "support.example.com"
_MX = "mx.support.example.com"
_BACKUP_MX = "mx2.support.example.com"

# The gate lets this many automatic messages per sender through in an hour
# (the `[gate] auto_reply_limit` and `auto_reply_window` defaults). The generator
# keeps every sender below it, so each auto-reply's outcome is known.
_AUTO_REPLY_LIMIT = 5
_AUTO_REPLY_WINDOW = timedelta(hours=1)

# Bounds on what the generator remembers, so memory does not grow with the count.
_OPEN_THREADS = 4000
_RECENT_ORIGINALS = 200
_MAX_REFERENCES = 12


class MixError(ValueError):
    """A mix spec that cannot be used; the message names the key and the fix."""


# -- the mix ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Proportions of a synthetic corpus.

    The three tables are weights: each is normalized, so they need not sum to 1.
    The other shares are probabilities between 0 and 1.
    """

    kinds: Mapping[str, float] = field(
        default_factory=lambda: {
            "new": 0.50,
            "reply": 0.30,
            "duplicate": 0.05,
            "auto_reply": 0.07,
            "spam": 0.08,
        }
    )
    reply_styles: Mapping[str, float] = field(
        default_factory=lambda: {
            "full": 0.50,
            "in_reply_to": 0.20,
            "references": 0.15,
            "subject_key": 0.15,
        }
    )
    charsets: Mapping[str, float] = field(
        default_factory=lambda: {
            "us-ascii": 0.15,
            "utf-8": 0.55,
            "iso-8859-1": 0.14,
            "iso-2022-jp": 0.08,
            "koi8-r": 0.08,
        }
    )
    tenants: tuple[str, ...] = ("acme", "globex", "initech", "umbrella", "hooli", "soylent")
    # Share of new tickets whose subject carries a [SUP-123] key from an older helpdesk.
    keyed_tickets: float = 0.30
    # Share of new tickets from free-mail users (gmail.com, …), who have no colleagues.
    free_mail: float = 0.10
    # Share of new tickets addressed to two tenants; their thread's mail makes two copies.
    multi_tenant: float = 0.03
    # Share of new tickets whose first reply arrives before them (a greylisted original).
    reply_before_parent: float = 0.01
    # Share of automatic replies that reply to a ticket a colleague was copied on.
    threaded_auto_replies: float = 0.5
    # Shares of human mail with an HTML alternative, an inline image, attachments.
    html: float = 0.60
    inline_image: float = 0.05
    attachment: float = 0.20
    # Share of messages written with CRLF line endings instead of LF.
    crlf: float = 0.15
    # Attachment sizes are log-normal: this median in bytes, this sigma, capped at the maximum.
    attachment_median_bytes: int = 16_000
    attachment_sigma: float = 1.0
    attachment_max_bytes: int = 2_000_000
    # Mean seconds between two arrivals (exponential gaps).
    mean_gap_seconds: float = 3.0

    def weight_table(self, name: str) -> list[tuple[str, float]]:
        """Return a table's entries with their weights normalized to sum to 1."""
        table = getattr(self, name)
        total = sum(table.values())
        return [(key, value / total) for key, value in table.items()]


_TABLES = {"kinds": KINDS, "reply_styles": REPLY_STYLES, "charsets": CHARSETS}
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.]{0,63}")


def load_mix(path: str | Path) -> Mix:
    """Read a mix spec from a TOML or JSON file (by suffix); left-out keys keep their defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MixError(f"cannot read mix spec {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise MixError(f"mix spec {path} is not UTF-8; save it as UTF-8") from exc

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise MixError(f"invalid {kind} in mix spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MixError(f"mix spec {path} must hold a table (an object), not {type(data).__name__}")
    return mix_from_mapping(data, origin=str(path))


def mix_from_mapping(data: Mapping[str, Any], base: Mix | None = None, origin: str = "mix") -> Mix:
    """Validate a parsed mix spec and return `base` (the defaults) with its values applied.

    Raises `MixError` for an unknown key, a value of the wrong type, a share
    outside 0 to 1, a negative weight, or a table whose weights are all zero.
    """
    base = base or Mix()
    known = {item.name: item for item in dataclasses.fields(Mix)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise MixError(
                f"unknown key {key!r} in {origin}; known keys: {', '.join(sorted(known))}"
            )
        if key in _TABLES:
            changes[key] = _weight_table(key, value, getattr(base, key), origin)
        elif key == "tenants":
            changes[key] = _tenant_list(value, origin)
        else:
            changes[key] = _number(key, value, known[key].type, origin)
    return dataclasses.replace(base, **changes)


def _weight_table(
    name: str, value: Any, current: Mapping[str, float], origin: str
) -> dict[str, float]:
    allowed = _TABLES[name]
    if not isinstance(value, dict):
        raise MixError(
            f"'{name}' in {origin} must be a table of weights, e.g. {name}.{allowed[0]} = 0.5"
        )
    table = dict(current)
    for key, weight in value.items():
        if key not in allowed:
            raise MixError(
                f"unknown key '{name}.{key}' in {origin}; use one of {', '.join(allowed)}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise MixError(
                f"invalid value for '{name}.{key}' in {origin}: {weight!r}; use a number"
            )
        if weight < 0:
            raise MixError(f"invalid value for '{name}.{key}' in {origin}: {weight}; use 0 or more")
        table[key] = float(weight)
    if not any(table.values()):
        raise MixError(
            f"'{name}' in {origin} has only zero weights; give at least one a positive weight"
        )
    return table


def _tenant_list(value: Any, origin: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise MixError(f"'tenants' in {origin} must be a non-empty list of tenant names")
    for tenant in value:
        if not _TENANT_NAME.fullmatch(tenant):
            raise MixError(
                f"invalid tenant {tenant!r} in {origin}: use lowercase letters, digits, '_' and "
                "'.', starting with a letter or digit (no '-' or '+', which end a tenant name)"
            )
    return tuple(dict.fromkeys(value))


def _number(key: str, value: Any, hint: Any, origin: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MixError(f"invalid value for '{key}' in {origin}: {value!r}; use a number")
    if hint in (int, "int"):
        if value != int(value) or value < 1:
            raise MixError(
                f"invalid value for '{key}' in {origin}: {value!r}; use a positive integer"
            )
        return int(value)
    if key in ("attachment_sigma", "mean_gap_seconds"):
        if value <= 0:
            raise MixError(f"invalid value for '{key}' in {origin}: {value}; use a positive number")
        return float(value)
    if not 0 <= value <= 1:
        raise MixError(
            f"invalid value for '{key}' in {origin}: {value}; use a share between 0 and 1"
        )
    return float(value)


# -- what comes out --------------------------------------------------------------


@dataclass(frozen=True)
class SynthMessage:
    """One generated message with what it shows and the outcome the flow should give it."""

    serial: int  # 0-based position in the corpus
    kind: str  # one of KINDS
    # The kind's variant: a reply style or "before_parent", "threaded" or
    # "unthreaded" for auto-replies, the original's kind for a duplicate.
    variant: str
    message_id: str
    envelope_sender: str
    arrived_at: datetime  # the topmost Received time
    tenants: tuple[str, ...]
    outcome: Outcome  # what each tenant copy should end as
    review: bool  # whether a ticket it opens is held for review
    charset: str
    raw: bytes
    # True when the message arrives before the message it replies to, so the flow
    # holds it as an orphan until that one arrives.
    early: bool = False

    @property
    def label(self) -> str:
        """Return a short name for files: the kind, and the variant when it adds detail."""
        if self.kind in ("new", "spam") or self.variant == self.kind:
            return self.kind.replace("_", "-")
        return f"{self.kind}-{self.variant}".replace("_", "-")


@dataclass
class SynthSummary:
    """Counts of a corpus's messages and the run summary the flow should print for it."""

    count: int = 0
    seed: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    charsets: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)
    expected: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "read",
                "fanned_out",
                "tickets_created",
                "replies_threaded",
                "duplicates",
                "suppressed",
                "dead_letters",
                "review",
            ),
            0,
        )
    )

    def add(self, message: SynthMessage, features: Counter[str]) -> None:
        """Count one message and the outcome of each of its tenant copies."""
        self.count += 1
        self.bytes += len(message.raw)
        self.kinds[message.kind] += 1
        self.variants[f"{message.kind}/{message.variant}"] += 1
        self.charsets[message.charset] += 1
        self.features.update(features)

        copies = len(message.tenants)
        self.expected["read"] += 1
        self.expected["fanned_out"] += copies - 1
        name = {
            "created": "tickets_created",
            "threaded": "replies_threaded",
            "duplicate": "duplicates",
            "suppressed": "suppressed",
        }[message.outcome]
        self.expected[name] += copies
        if message.outcome == "created" and message.review:
            self.expected["review"] += copies

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain data for JSON."""
        return {
            "count": self.count,
            "seed": self.seed,
            "bytes": self.bytes,
            "average_bytes": round(self.bytes / self.count) if self.count else 0,
            "kinds": dict(sorted(self.kinds.items())),
            "variants": dict(sorted(self.variants.items())),
            "charsets": dict(sorted(self.charsets.items())),
            "features": dict(sorted(self.features.items())),
            "expected": dict(self.expected),
        }


# -- text ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Language:
    """Words of one language, each encodable in every charset that carries the language."""

    name: str
    # (name as written, the same in ASCII for the address)
    first_names: tuple[tuple[str, str], ...]
    last_names: tuple[tuple[str, str], ...]
    greetings: tuple[str, ...]
    closings: tuple[str, ...]
    sentences: tuple[str, ...]
    subjects: tuple[str, ...]
    reply_prefix: str
    out_of_office: str
    out_of_office_body: str
    separator: str = " "


_SYSTEMS = (
    "payments API",
    "checkout",
    "login page",
    "CSV export",
    "webhook delivery",
    "search index",
    "invoice generator",
    "mobile app",
    "SSO integration",
    "reporting dashboard",
)

_ENGLISH = _Language(
    name="en",
    first_names=tuple(
        (name, name.lower())
        for name in (
            "Alice",
            "Bob",
            "Carla",
            "Dev",
            "Erin",
            "Farid",
            "Grace",
            "Hector",
            "Ines",
            "Jonas",
            "Kira",
            "Liam",
            "Maya",
            "Noah",
            "Olivia",
            "Pavel",
            "Quinn",
            "Rosa",
            "Sam",
            "Tara",
        )
    ),
    last_names=tuple(
        (name, name.lower())
        for name in (
            "Moreau",
            "Lindqvist",
            "Okafor",
            "Patel",
            "Nguyen",
            "Schmidt",
            "Garcia",
            "Kowalski",
            "Brennan",
            "Haddad",
            "Larsen",
            "Tanaka",
            "Rossi",
            "Mbeki",
            "Fischer",
            "Novak",
        )
    ),
    greetings=("Hello support,", "Hi team,", "Hello,", "Dear support team,", "Hi there,"),
    closings=("Thanks,", "Best regards,", "Kind regards,", "Thank you,", "Cheers,"),
    sentences=(
        "Since {time} UTC about one in {n} requests to the {system} fails with a 504.",
        "Nothing changed on our side since last {day}, and the problem started without warning.",
        "The request ids of two failing calls are {ref} and {ref2}.",
        "Our customers in the US store cannot complete an order while this goes on.",
        "We retried with a fresh API key and the error did not change.",
        "The {system} shows an empty page instead of the usual list of {n} entries.",
        "Could you check whether something changed in your deployment this morning?",
        "This blocks our finance team, who need the numbers before the end of the quarter.",
        "The logs attached cover the last {n} minutes before we stopped the job.",
        "The same call works from our staging account, so it looks specific to production.",
        "We see the error in Chrome and Firefox, on several machines and networks.",
        "Our monitoring shows the latency of the {system} going from 200 ms to {n} seconds.",
        "Please let us know if you need a HAR file or more request ids.",
        "The export job {ref} has been stuck at 99 percent for {n} hours now.",
        "After the update on {day} the totals in the {system} no longer match our invoices.",
        "A colleague reports the same behaviour from the Berlin office.",
        "We would rate this P2: there is a workaround, but it costs us a lot of manual work.",
        "Is there a status page where we can follow the incident?",
        "Our contract number is {ref}, in case you need it.",
        "The webhook endpoint answered 200 within 80 ms, yet the events arrived {n} minutes late.",
    ),
    subjects=(
        "{System} returns 504 on POST /charges",
        "Cannot log in since this morning",
        "{System} stuck at 99% (job {ref})",
        "Totals in the {system} do not match invoice {ref}",
        "{System} very slow since {day}",
        "Question about the {system} limits",
        "Duplicate charge on order {ref}",
        "Webhook events arrive {n} minutes late",
        "{System} shows an empty page",
        "Request for a refund of invoice {ref}",
    ),
    reply_prefix="Re: ",
    out_of_office="Out of office",
    out_of_office_body=(
        "Thank you for your message. I am out of the office until Monday with limited "
        "access to email. For anything urgent please contact my colleague."
    ),
)

_GERMAN = _Language(
    name="de",
    first_names=(
        ("Jürgen", "juergen"),
        ("Sabine", "sabine"),
        ("Björn", "bjoern"),
        ("Käthe", "kaethe"),
        ("Uwe", "uwe"),
        ("Anja", "anja"),
        ("Jörg", "joerg"),
    ),
    last_names=(
        ("Müller", "mueller"),
        ("Schäfer", "schaefer"),
        ("Weiß", "weiss"),
        ("Köhler", "koehler"),
        ("Bauer", "bauer"),
        ("Groß", "gross"),
    ),
    greetings=("Hallo Support-Team,", "Guten Tag,", "Sehr geehrte Damen und Herren,"),
    closings=("Viele Grüße", "Mit freundlichen Grüßen", "Beste Grüße"),
    sentences=(
        "Seit heute früh schlägt etwa jede {n}. Anfrage an den {system} fehl.",
        "Die Überweisung für Rechnung {ref} wurde doppelt abgebucht.",
        "Unsere Buchhaltung benötigt die korrigierte Rechnung bis Freitag.",
        "Der Fehler tritt nur in der Produktivumgebung auf, nicht im Test.",
        "Könnten Sie bitte prüfen, ob sich bei Ihnen etwas geändert hat?",
        "Im Anhang finden Sie die Protokolldatei der letzten {n} Minuten.",
        "Die Größe der Exportdatei ist plötzlich auf {n} KB geschrumpft.",
        "Wir haben den Browser-Cache geleert, ohne dass sich etwas ändert.",
        "Für Rückfragen erreichen Sie mich unter der üblichen Nummer.",
    ),
    subjects=(
        "Störung beim {system} seit {day}",
        "Rechnung {ref} doppelt abgebucht",
        "Anmeldung schlägt fehl",
        "Export bleibt bei 99 % hängen",
        "Frage zur Änderung der Zahlungsart",
    ),
    reply_prefix="AW: ",
    out_of_office="Abwesenheitsnotiz",
    out_of_office_body=(
        "Vielen Dank für Ihre Nachricht. Ich bin bis Montag nicht im Büro und lese "
        "meine E-Mails nur eingeschränkt. In dringenden Fällen wenden Sie sich bitte an "
        "meine Kollegin."
    ),
)

_FRENCH = _Language(
    name="fr",
    first_names=(
        ("François", "francois"),
        ("Hélène", "helene"),
        ("Loïc", "loic"),
        ("Amélie", "amelie"),
        ("Jérôme", "jerome"),
        ("Céline", "celine"),
    ),
    last_names=(
        ("Lévesque", "levesque"),
        ("Dubois", "dubois"),
        ("Lefèvre", "lefevre"),
        ("Garnier", "garnier"),
        ("Bénard", "benard"),
        ("Rivière", "riviere"),
    ),
    greetings=("Bonjour,", "Madame, Monsieur,", "Bonjour à toute l'équipe,"),
    closings=("Cordialement,", "Bien à vous,", "Merci d'avance,"),
    sentences=(
        "La facture {ref} applique une TVA à 21 % alors que notre société est établie en France.",
        "Depuis ce matin, le {system} répond très lentement, parfois après {n} secondes.",
        "Pourriez-vous émettre une facture rectifiée avant la clôture du trimestre ?",
        "Nous avons vérifié nos paramètres et rien n'a changé de notre côté.",
        "Le problème concerne environ {n} commandes passées depuis lundi.",
        "Vous trouverez ci-joint l'export de la période concernée.",
        "Notre comptabilité a besoin d'une réponse rapide, merci de votre aide.",
        "Le paiement a été débité deux fois pour la commande {ref}.",
    ),
    subjects=(
        "Problème de facturation : TVA incorrecte sur la facture {ref}",
        "Paiement débité deux fois",
        "Lenteurs sur le {system} depuis {day}",
        "Demande de remboursement, commande {ref}",
        "Accès refusé à l'espace client",
    ),
    reply_prefix="RE: ",
    out_of_office="Absence du bureau",
    out_of_office_body=(
        "Merci pour votre message. Je suis absente jusqu'à lundi et je n'ai qu'un accès "
        "limité à ma messagerie. Pour toute urgence, merci de contacter ma collègue."
    ),
)

_JAPANESE = _Language(
    name="ja",
    first_names=(
        ("健", "ken"),
        ("陽子", "yoko"),
        ("誠", "makoto"),
        ("美香", "mika"),
        ("大輔", "daisuke"),
    ),
    last_names=(
        ("田中", "tanaka"),
        ("鈴木", "suzuki"),
        ("佐藤", "sato"),
        ("高橋", "takahashi"),
        ("山本", "yamamoto"),
    ),
    greetings=("サポート御中", "いつもお世話になっております。"),
    closings=("よろしくお願いいたします。", "以上、ご確認をお願いいたします。"),
    sentences=(
        "本日より、注文一覧のCSVエクスポートを開くと商品名が文字化けして表示されます。",
        "先週までは問題なく表示されていました。",
        "お手数ですが、ご確認をお願いいたします。",
        "ログイン画面で認証エラーが発生し、管理画面に入れません。",
        "請求書{ref}の金額が契約内容と異なっております。",
        "エラーは約{n}分おきに発生しています。",
        "添付のログファイルをご参照ください。",
        "至急ご対応いただけますと幸いです。",
    ),
    subjects=(
        "CSVエクスポートで文字化けが発生しています",
        "ログインできません（{ref}）",
        "請求書{ref}の金額について",
        "管理画面の表示が遅い件",
    ),
    reply_prefix="Re: ",
    out_of_office="不在通知",
    out_of_office_body="ただいま出張中のため、月曜日まで返信が遅れます。お急ぎの場合は同僚までご連絡ください。",
    separator="",
)

_RUSSIAN = _Language(
    name="ru",
    first_names=(
        ("Дмитрий", "dmitry"),
        ("Анна", "anna"),
        ("Сергей", "sergey"),
        ("Ольга", "olga"),
        ("Игорь", "igor"),
    ),
    last_names=(
        ("Иванов", "ivanov"),
        ("Смирнова", "smirnova"),
        ("Кузнецов", "kuznetsov"),
        ("Попова", "popova"),
    ),
    greetings=("Здравствуйте!", "Добрый день!", "Уважаемая поддержка,"),
    closings=("С уважением,", "Спасибо заранее,", "Всего доброго,"),
    sentences=(
        "Начиная с сегодняшнего утра при обращении к API мы получаем ошибку 401.",
        "Ключ доступа не менялся, настройки те же, что и на прошлой неделе.",
        "Проверьте, пожалуйста, что случилось с нашей учётной записью.",
        "Ошибка повторяется примерно каждые {n} минут.",
        "Счёт {ref} выставлен дважды, просим вернуть лишнюю сумму.",
        "Во вложении журнал запросов за последний час.",
        "Отчёт по продажам не формируется уже {n} часов.",
    ),
    subjects=(
        "Ошибка 401 при запросе к API",
        "Счёт {ref} выставлен дважды",
        "Не формируется отчёт",
        "Медленная работа личного кабинета",
    ),
    reply_prefix="Re: ",
    out_of_office="Автоответ",
    out_of_office_body="Спасибо за письмо. Я в отпуске до понедельника и отвечу после возвращения.",
)

_LANGUAGES_FOR_CHARSET: dict[str, tuple[_Language, ...]] = {
    "us-ascii": (_ENGLISH,),
    "utf-8": (_ENGLISH, _ENGLISH, _GERMAN, _FRENCH, _JAPANESE, _RUSSIAN),
    "iso-8859-1": (_FRENCH, _GERMAN),
    "iso-2022-jp": (_JAPANESE,),
    "koi8-r": (_RUSSIAN,),
}

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "gmx.de", "mail.ru")
_COMPANY_WORDS = (
    "blue",
    "fin",
    "kestrel",
    "pine",
    "crest",
    "harbor",
    "north",
    "wind",
    "atelier",
    "lumiere",
    "sakura",
    "shoji",
    "sever",
    "logistika",
    "bright",
    "path",
    "stone",
    "river",
    "maple",
    "orbit",
)
_TLDS = ("example.com", "example.org", "example.net")
# RFC 5737 documentation prefixes, so the addresses in Received lines are assigned to no host.
_DOCUMENTATION_NETWORKS = ("192.0.2", "198.51.100", "203.0.113")
_MAILERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.7.1",
    "X-Mailer: Microsoft Outlook 16.0",
    "X-Mailer: Apple Mail (2.3776.700.51)",
    "User-Agent: Roundcube Webmail/1.6.9",
    "X-Mailer: Becky! ver. 2.81.07",
)
_TIMEZONES = tuple(timezone(timedelta(hours=hours)) for hours in (-8, -5, 0, 1, 2, 3, 9))

_SPAM_SUBJECTS = (
    "Get your store to page 1 of search results in 7 days!!!",
    "Your account {ref} has a pending reward",
    "Lowest price on business loans, approved today",
    "Invoice payment overdue - action required",
    "Exclusive offer for {system} owners",
)
_SPAM_BODY = (
    "<html><body><h1>LIMITED OFFER - {n}% OFF TODAY ONLY</h1>"
    "<p>Dear customer, our experts will push your shop to the top of every search engine.</p>"
    '<p><a href="http://offers.example.net/claim?id={ref}">CLAIM YOUR SPOT NOW</a></p>'
    "<p>To stop receiving these offers reply STOP.</p></body></html>"
)


# -- the generator ---------------------------------------------------------------


@dataclass(frozen=True)
class _Company:
    domain: str
    mail_host: str
    address_ip: str
    zone: timezone
    free_mail: bool


@dataclass(frozen=True)
class _Person:
    name: str
    address: str
    company: _Company


@dataclass
class _Thread:
    """A ticket's thread as the generator tracks it, for the replies it writes later."""

    ids: list[str]
    subject: str
    key: str | None
    requester: _Person
    colleagues: list[_Person]
    copied: list[_Person]
    recipients: tuple[str, ...]
    delivered_to: str | None
    tenants: tuple[str, ...]
    language: _Language
    charset: str
    auto_replied: bool = False
    # True while the thread's first message is held back to arrive after a reply.
    root_pending: bool = False


@dataclass
class _Draft:
    """A message before it is rendered to bytes."""

    kind: str
    variant: str
    outcome: Outcome
    message_id: str
    sender: _Person
    recipients: tuple[str, ...]
    copied: tuple[str, ...]
    delivered_to: str | None
    subject: str
    sent_at: datetime
    language: _Language
    charset: str
    tenants: tuple[str, ...]
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    extra_headers: tuple[str, ...] = ()
    authentication: str = "pass"
    review: bool = False
    body_sentences: int = 6
    html_only: bool = False
    html_body: str | None = None
    may_attach: bool = True
    quote: str = ""
    thread: _Thread | None = None


class _Generator:
    """Draws the corpus message by message; every random choice comes from `rng`."""

    def __init__(self, seed: int, mix: Mix, start: datetime) -> None:
        self.rng = random.Random(seed)
        self.mix = mix
        self.clock = start.astimezone(UTC)
        self.kinds = mix.weight_table("kinds")
        self.styles = mix.weight_table("reply_styles")
        self.charsets = mix.weight_table("charsets")
        self.companies = [self._company(number) for number in range(400)]
        self.threads: deque[_Thread] = deque(maxlen=_OPEN_THREADS)
        self.keyed: deque[_Thread] = deque(maxlen=_OPEN_THREADS)
        self.copied: deque[_Thread] = deque(maxlen=_OPEN_THREADS)
        self.recent: deque[SynthMessage] = deque(maxlen=_RECENT_ORIGINALS)
        # Originals held back to arrive after their first reply: (serial due, draft).
        self.held: deque[tuple[int, _Draft]] = deque()
        self.automatic_senders: deque[tuple[datetime, str]] = deque()
        self.automatic_counts: Counter[str] = Counter()
        self.next_key = 100 + self.rng.randrange(900)
        self.ids_made = 0
        self.features: Counter[str] = Counter()

    # -- drawing -------------------------------------------------------------

    def messages(self, count: int) -> Iterator[tuple[SynthMessage, Counter[str]]]:
        for serial in range(count):
            self.clock += timedelta(seconds=self.rng.expovariate(1 / self.mix.mean_gap_seconds))
            self.features = Counter()
            message = self._next(serial, count)
            if message.kind != "duplicate":
                self.recent.append(message)
            yield message, self.features

    def _next(self, serial: int, count: int) -> SynthMessage:
        if self.held and self.held[0][0] <= serial:
            _, original = self.held.popleft()
            return self._render(serial, original)

        kind = self._choose(self.kinds)
        if kind == "duplicate" and self.recent:
            return self._duplicate(serial)
        draft: _Draft | None = None
        if kind == "reply":
            draft = self._reply()
        elif kind == "auto_reply":
            draft = self._auto_reply()
        elif kind == "spam":
            draft = self._spam()
        if draft is None:
            return self._new_ticket(serial, count)
        return self._render(serial, draft)

    def _choose(self, table: list[tuple[str, float]]) -> str:
        point = self.rng.random()
        for name, weight in table:
            point -= weight
            if point < 0:
                return name
        return table[-1][0]

    def _chance(self, share: float) -> bool:
        return self.rng.random() < share

    def _message_id(self, sent_at: datetime, company: _Company) -> str:
        """Return a Message-ID no other message of the corpus has: a counter makes it unique."""
        self.ids_made += 1
        unique = f"{self.ids_made:x}.{self.rng.getrandbits(32):08x}"
        return f"<{sent_at:%Y%m%d%H%M%S}.{unique}@{company.mail_host}>"

    # -- people --------------------------------------------------------------

    def _company(self, number: int) -> _Company:
        rng = self.rng
        name = rng.choice(_COMPANY_WORDS) + rng.choice(_COMPANY_WORDS) + str(number)
        domain = f"{name}.{rng.choice(_TLDS)}"
        return _Company(
            domain=domain,
            mail_host=f"mail.{domain}",
            address_ip=f"{rng.choice(_DOCUMENTATION_NETWORKS)}.{rng.randrange(1, 255)}",
            zone=rng.choice(_TIMEZONES),
            free_mail=False,
        )

    def _free_mail_company(self) -> _Company:
        domain = self.rng.choice(_FREE_MAIL)
        return _Company(
            domain,
            f"mail.{domain}",
            f"198.51.100.{self.rng.randrange(1, 255)}",
            self.rng.choice(_TIMEZONES),
            free_mail=True,
        )

    def _person(self, company: _Company, language: _Language) -> _Person:
        first, first_ascii = self.rng.choice(language.first_names)
        last, last_ascii = self.rng.choice(language.last_names)
        number = self.rng.randrange(1000)
        name = f"{last} {first}" if language.name == "ja" else f"{first} {last}"
        return _Person(name, f"{first_ascii}.{last_ascii}{number}@{company.domain}", company)

    # -- kinds ---------------------------------------------------------------

    def _new_ticket(self, serial: int, count: int) -> SynthMessage:
        thread, draft = self._open_thread()
        # A reply before its parent needs room for the parent before the corpus ends.
        if serial + 12 < count and self._chance(self.mix.reply_before_parent):
            thread.root_pending = True
            reply = self._reply_draft(thread, "full", variant="before_parent")
            draft.sent_at = reply.sent_at - timedelta(minutes=self.rng.randrange(2, 30))
            self.held.append((serial + self.rng.randrange(2, 11), draft))
            return self._render(serial, reply)
        return self._render(serial, draft)

    def _open_thread(self) -> tuple[_Thread, _Draft]:
        mix = self.mix
        charset = self._choose(self.charsets)
        language = self.rng.choice(_LANGUAGES_FOR_CHARSET[charset])
        free_mail = self._chance(mix.free_mail)
        company = self._free_mail_company() if free_mail else self.rng.choice(self.companies)
        requester = self._person(company, language)
        colleagues = [] if free_mail else [self._person(company, language) for _ in range(2)]
        copied = colleagues[: self.rng.choice((0, 0, 1, 2))]

        tenants = self._tenants(multi=self._chance(mix.multi_tenant))
        recipients, delivered_to = self._mailboxes(tenants)
        subject = self._fill(self.rng.choice(language.subjects), language)
        key = None
        if not free_mail and self._chance(mix.keyed_tickets):
            key = f"SUP-{self.next_key}"
            self.next_key += self.rng.randrange(1, 4)
            subject = f"[{key}] {subject}"
        elif charset in ("us-ascii", "utf-8") and self._chance(0.3):
            subject = f"[P{self.rng.randrange(1, 4)}] {subject}"

        sent_at = self._sent_at()
        message_id = self._message_id(sent_at, company)
        thread = _Thread(
            [message_id],
            subject,
            key,
            requester,
            colleagues,
            copied,
            recipients,
            delivered_to,
            tenants,
            language,
            charset,
        )
        draft = _Draft(
            kind="new",
            variant="new",
            outcome="created",
            message_id=message_id,
            sender=requester,
            recipients=recipients,
            copied=tuple(person.address for person in copied),
            delivered_to=delivered_to,
            subject=subject,
            sent_at=sent_at,
            language=language,
            charset=charset,
            tenants=tenants,
            thread=thread,
        )
        self.threads.append(thread)
        if key is not None:
            self.keyed.append(thread)
        if copied:
            self.copied.append(thread)
        return thread, draft

    def _tenants(self, multi: bool) -> tuple[str, ...]:
        tenants = self.mix.tenants
        if multi and len(tenants) > 1:
            return tuple(sorted(self.rng.sample(tenants, 2)))
        return (self.rng.choice(tenants),)

    def _mailboxes(self, tenants: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
        """Return the support addresses to write to and the Delivered-To of one tenant."""
        boxes = tuple(
            f"{tenant}{self.rng.choice(('-support', '-support', '+billing', ''))}@{INBOUND_DOMAIN}"
            for tenant in tenants
        )
        return boxes, (boxes[0] if len(boxes) == 1 else None)

    def _reply(self) -> _Draft | None:
        style = self._choose(self.styles)
        if style == "subject_key":
            thread = self._recent(self.keyed)
            if thread is None:
                style, thread = "full", self._recent(self.threads)
        else:
            thread = self._recent(self.threads)
        if thread is None:
            return None
        return self._reply_draft(thread, style, variant=style)

    def _recent(self, threads: deque[_Thread]) -> _Thread | None:
        """Pick an open thread, the recent ones far more often than old ones."""
        if not threads:
            return None
        back = min(len(threads) - 1, int(self.rng.expovariate(1 / 150)))
        return threads[-1 - back]

    def _reply_draft(self, thread: _Thread, style: str, variant: str) -> _Draft:
        sender = thread.requester
        if thread.colleagues and self._chance(0.4):
            sender = self.rng.choice(thread.colleagues)
        sent_at = self._sent_at()
        draft = _Draft(
            kind="reply",
            variant=variant,
            outcome="threaded",
            message_id=self._message_id(sent_at, sender.company),
            sender=sender,
            recipients=thread.recipients,
            copied=(),
            delivered_to=thread.delivered_to,
            subject=thread.language.reply_prefix + thread.subject,
            sent_at=sent_at,
            language=thread.language,
            charset=thread.charset,
            tenants=thread.tenants,
            body_sentences=self.rng.randrange(2, 6),
            quote=thread.subject,
            thread=thread,
        )
        if style in ("full", "in_reply_to"):
            draft.in_reply_to = thread.ids[-1]
        if style in ("full", "references"):
            draft.references = tuple(thread.ids[:1] + thread.ids[1:][-(_MAX_REFERENCES - 1) :])
        if style == "references":
            draft.extra_headers = (
                f"Thread-Index: {base64.b64encode(self.rng.randbytes(22)).decode()}",
            )
        thread.ids.append(draft.message_id)
        return draft

    def _auto_reply(self) -> _Draft | None:
        thread = None
        if self._chance(self.mix.threaded_auto_replies):
            thread = self._unanswered(self.copied)
        if thread is not None:
            sender = thread.copied[0]
            if self._automatic_allowed(sender.address, len(thread.tenants)):
                thread.auto_replied = True
                language = thread.language
                sent_at = self._sent_at()
                return _Draft(
                    kind="auto_reply",
                    variant="threaded",
                    outcome="threaded",
                    message_id=self._message_id(sent_at, sender.company),
                    sender=sender,
                    recipients=thread.recipients,
                    copied=(thread.requester.address,),
                    delivered_to=thread.delivered_to,
                    subject=f"{language.out_of_office}: {thread.subject}",
                    sent_at=sent_at,
                    language=language,
                    charset=thread.charset,
                    tenants=thread.tenants,
                    in_reply_to=thread.ids[0],
                    references=(thread.ids[0],),
                    extra_headers=("Auto-Submitted: auto-replied", "X-Auto-Response-Suppress: All"),
                    html_body="",
                    may_attach=False,
                    thread=thread,
                )

        charset = self._choose(self.charsets)
        language = self.rng.choice(_LANGUAGES_FOR_CHARSET[charset])
        sender = self._person(self.rng.choice(self.companies), language)
        while not self._automatic_allowed(sender.address, 1):
            sender = self._person(self.rng.choice(self.companies), language)
        tenants = self._tenants(multi=False)
        recipients, delivered_to = self._mailboxes(tenants)
        sent_at = self._sent_at()
        return _Draft(
            kind="auto_reply",
            variant="unthreaded",
            outcome="suppressed",
            message_id=self._message_id(sent_at, sender.company),
            sender=sender,
            recipients=recipients,
            copied=(),
            delivered_to=delivered_to,
            subject=language.out_of_office,
            sent_at=sent_at,
            language=language,
            charset=charset,
            tenants=tenants,
            extra_headers=("Auto-Submitted: auto-replied", "Precedence: auto_reply"),
            html_body="",
            may_attach=False,
        )

    def _unanswered(self, threads: deque[_Thread]) -> _Thread | None:
        for _ in range(8):
            thread = self._recent(threads)
            if thread is not None and not thread.auto_replied:
                return thread
        return None

    def _automatic_allowed(self, sender: str, copies: int) -> bool:
        """Count an automatic message's tenant copies; False if the gate's limit could drop one."""
        horizon = self.clock - _AUTO_REPLY_WINDOW
        while self.automatic_senders and self.automatic_senders[0][0] <= horizon:
            _, old = self.automatic_senders.popleft()
            self.automatic_counts[old] -= 1
            if not self.automatic_counts[old]:
                del self.automatic_counts[old]
        # One below the limit leaves room for the gate seeing event times out of order.
        if self.automatic_counts[sender] + copies > _AUTO_REPLY_LIMIT - 1:
            return False
        for _ in range(copies):
            self.automatic_senders.append((self.clock, sender))
        self.automatic_counts[sender] += copies
        return True

    def _spam(self) -> _Draft:
        rng = self.rng
        spammer = _Company(
            f"offers{rng.randrange(10_000)}.example.net",
            "unknown",
            f"203.0.113.{rng.randrange(1, 255)}",
            UTC,
            free_mail=False,
        )
        sender = _Person("Special Offers", f"deals@{spammer.domain}", spammer)
        tenants = self._tenants(multi=False)
        recipients, delivered_to = self._mailboxes(tenants)
        score = rng.uniform(5.5, 14.0)
        sent_at = self._sent_at()
        return _Draft(
            kind="spam",
            variant="spam",
            outcome="created",
            message_id=self._message_id(
                sent_at, dataclasses.replace(spammer, mail_host=spammer.domain)
            ),
            sender=sender,
            recipients=recipients,
            copied=(),
            delivered_to=delivered_to,
            subject=self._fill(rng.choice(_SPAM_SUBJECTS), _ENGLISH),
            sent_at=sent_at,
            language=_ENGLISH,
            charset="us-ascii",
            tenants=tenants,
            extra_headers=(
                f"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-26) on {_MX}",
                "X-Spam-Flag: YES",
                "X-Spam-Level: " + "*" * int(score),
                f"X-Spam-Status: Yes, score={score:.1f} required=5.0 tests=BAYES_99,HTML_MESSAGE,\n"
                "\tMIME_HTML_ONLY,RDNS_NONE,URIBL_ABUSE_SURBL autolearn=spam version=4.0.1",
                f"Reply-To: deals{rng.randrange(1000)}@gmail.com",
            ),
            authentication="spam",
            review=True,
            html_only=True,
            html_body=self._fill(_SPAM_BODY, _ENGLISH),
            may_attach=False,
        )

    def _duplicate(self, serial: int) -> SynthMessage:
        original = self.rng.choice(self.recent)
        received = _received_line(
            self.rng, _BACKUP_MX, "198.51.100.12", original.tenants, self.clock, via=_MX
        )
        raw = _insert_received(original.raw, received, crlf=original.raw.endswith(b"\r\n"))
        return SynthMessage(
            serial=serial,
            kind="duplicate",
            variant=original.kind,
            message_id=original.message_id,
            envelope_sender=original.envelope_sender,
            arrived_at=self.clock,
            tenants=original.tenants,
            outcome="duplicate",
            review=False,
            charset=original.charset,
            raw=raw,
        )

    # -- rendering -----------------------------------------------------------

    def _sent_at(self) -> datetime:
        return self.clock - timedelta(seconds=self.rng.randrange(1, 40))

    def _fill(self, template: str, language: _Language) -> str:
        rng = self.rng
        system = rng.choice(_SYSTEMS)
        return template.format(
            n=rng.randrange(2, 60),
            ref=f"{rng.choice('FKRX')}-{rng.randrange(2024, 2027)}-{rng.randrange(1, 999):03d}",
            ref2=f"{rng.getrandbits(24):06x}",
            time=f"{rng.randrange(0, 24):02d}:{rng.randrange(0, 60):02d}",
            day=rng.choice(_DAYS),
            system=system,
            System=system[0].upper() + system[1:],
        )

    def _render(self, serial: int, draft: _Draft) -> SynthMessage:
        body = self._body(draft)
        headers = self._headers(draft)
        crlf = self._chance(self.mix.crlf)
        raw = "\n".join(headers).encode("ascii") + b"\n" + body
        if crlf:
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.features["crlf"] += crlf
        thread = draft.thread
        early = thread is not None and thread.root_pending and draft.kind != "new"
        if thread is not None and draft.kind == "new":
            thread.root_pending = False
        return SynthMessage(
            serial=serial,
            kind=draft.kind,
            variant=draft.variant,
            message_id=draft.message_id,
            envelope_sender=draft.sender.address,
            arrived_at=self.clock,
            tenants=draft.tenants,
            outcome=draft.outcome,
            review=draft.review,
            charset=draft.charset,
            raw=raw,
            early=early,
        )

    def _headers(self, draft: _Draft) -> list[str]:
        rng = self.rng
        sender = draft.sender
        company = sender.company
        lines = [f"Return-Path: <{sender.address}>"]
        if draft.delivered_to:
            lines.append(f"Delivered-To: {draft.delivered_to}")
        lines.append(
            _received_line(
                rng,
                company.mail_host,
                company.address_ip,
                draft.tenants,
                self.clock,
                via=None,
                recipient=draft.delivered_to,
            )
        )
        lines.append(_authentication_results(sender, draft.authentication))
        if draft.kind != "spam" and self._chance(0.5):
            lines.append(
                f"X-Spam-Status: No, score={rng.uniform(-2.0, 2.5):.1f} required=5.0 "
                "tests=DKIM_SIGNED,DKIM_VALID,SPF_PASS autolearn=ham version=4.0.1"
            )
        lines.append("From: " + _address_header(sender.name, sender.address, draft.charset))
        lines.append("To: " + ", ".join(draft.recipients[:1]))
        copied = list(draft.recipients[1:]) + list(draft.copied)
        if copied:
            lines.append("Cc: " + ", ".join(copied))
        lines.append("Subject: " + _encoded_header(draft.subject, draft.charset, len("Subject: ")))
        lines.append("Date: " + format_datetime(draft.sent_at.astimezone(company.zone)))
        lines.append(f"Message-ID: {draft.message_id}")
        if draft.in_reply_to:
            lines.append(f"In-Reply-To: {draft.in_reply_to}")
        if draft.references:
            lines.append("References: " + "\n ".join(draft.references))
        lines.extend(draft.extra_headers)
        if draft.kind != "spam":
            lines.append(rng.choice(_MAILERS))
        lines.append("MIME-Version: 1.0")
        return lines

    def _body(self, draft: _Draft) -> bytes:
        """Return the Content-Type header lines and the body, as one block of bytes."""
        rng = self.rng
        mix = self.mix
        text = self._text(draft)
        if draft.html_only:
            return _leaf("text/html", draft.charset, draft.html_body or "", rng)

        with_html = draft.html_body is None and self._chance(mix.html)
        with_image = with_html and self._chance(mix.inline_image / max(mix.html, 1e-9))
        attachments = []
        if draft.may_attach and self._chance(mix.attachment):
            attachments = [self._attachment() for _ in range(rng.choice((1, 1, 1, 2)))]

        if with_image:
            content_id = f"image{rng.getrandbits(32):08x}@{draft.sender.company.domain}"
            html_text = _html_from_text(text, f"cid:{content_id}")
            alternative = _multipart(
                "alternative",
                [
                    _leaf("text/plain", draft.charset, text, rng),
                    _leaf("text/html", draft.charset, html_text, rng),
                ],
                rng,
            )
            image = _inline_image(rng, content_id)
            body = _multipart(
                "related", [alternative, image], rng, extra=' type="multipart/alternative";'
            )
            self.features["inline_image"] += 1
        elif with_html:
            body = _multipart(
                "alternative",
                [
                    _leaf("text/plain", draft.charset, text, rng),
                    _leaf("text/html", draft.charset, _html_from_text(text, None), rng),
                ],
                rng,
            )
        else:
            body = _leaf("text/plain", draft.charset, text, rng)
        self.features["html"] += with_html

        if attachments:
            body = _multipart("mixed", [body, *attachments], rng)
            self.features["with_attachments"] += 1
            self.features["attachments"] += len(attachments)
        return body

    def _text(self, draft: _Draft) -> str:
        language = draft.language
        rng = self.rng
        if draft.kind == "auto_reply":
            return language.out_of_office_body + "\n\n" + draft.sender.name + "\n"
        paragraphs = [rng.choice(language.greetings)]
        sentences = [
            self._fill(rng.choice(language.sentences), language)
            for _ in range(draft.body_sentences + rng.randrange(0, 6))
        ]
        for start in range(0, len(sentences), 3):
            paragraphs.append(language.separator.join(sentences[start : start + 3]))
        paragraphs.append(f"{rng.choice(language.closings)}\n{draft.sender.name}")
        text = "\n\n".join(_wrap(paragraph, language) for paragraph in paragraphs) + "\n"
        if draft.quote:
            text += (
                "\n"
                + "\n".join(f"> {line}" for line in _wrap(draft.quote, language).splitlines())
                + "\n"
            )
        return text

    def _attachment(self) -> bytes:
        rng = self.rng
        mix = self.mix
        size = int(mix.attachment_median_bytes * math.exp(mix.attachment_sigma * rng.gauss(0, 1)))
        size = max(200, min(size, mix.attachment_max_bytes))
        kind = rng.choice(("pdf", "pdf", "log", "csv", "json", "png", "xlsx"))
        self.features["attachment_bytes"] += size
        return _attachment_part(rng, kind, size)


# -- MIME pieces -------------------------------------------------------------------


def _wrap(paragraph: str, language: _Language, width: int = 72) -> str:
    """Break a paragraph into lines of at most `width` characters (half that for Japanese)."""
    if language.separator == "":
        step = width // 2
        return "\n".join(
            paragraph[start : start + step] for start in range(0, len(paragraph), step)
        )
    lines: list[str] = []
    current = ""
    for word in paragraph.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\n".join(lines)


def _html_from_text(text: str, image_src: str | None) -> str:
    paragraphs = [
        html.escape(paragraph).replace("\n", "<br>\n")
        for paragraph in text.split("\n\n")
        if paragraph
    ]
    parts = ['<html><head><meta charset="utf-8"></head><body>']
    parts += [f"<p>{paragraph}</p>" for paragraph in paragraphs]
    if image_src:
        parts.append(f'<p><img src="{image_src}" alt="screenshot" width="64" height="48"></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _leaf(content_type: str, charset: str, text: str, rng: random.Random) -> bytes:
    """Return one text part, headers and body, in the charset and a transfer encoding it allows."""
    # Japanese mailers write the charset label in capitals.
    label = charset.upper() if charset == "iso-2022-jp" else charset
    data = text.encode(charset)
    if charset == "us-ascii":
        encoding, body = "7bit", data
    elif charset == "iso-2022-jp":
        encoding, body = "7bit", data
    elif charset == "iso-8859-1":
        encoding, body = "quoted-printable", binascii.b2a_qp(data)
    else:
        encoding = rng.choice(("8bit", "8bit", "quoted-printable", "base64"))
        if encoding == "8bit":
            body = data
        elif encoding == "quoted-printable":
            body = binascii.b2a_qp(data)
        else:
            body = base64.encodebytes(data)
    header = (
        f'Content-Type: {content_type}; charset="{label}"\n'
        f"Content-Transfer-Encoding: {encoding}\n\n"
    )
    if not body.endswith(b"\n"):
        body += b"\n"
    return header.encode("ascii") + body


def _multipart(subtype: str, parts: list[bytes], rng: random.Random, extra: str = "") -> bytes:
    boundary = f"----=_Part_{rng.getrandbits(40):010x}.{rng.getrandbits(32):08x}"
    chunks = [
        f'Content-Type: multipart/{subtype};{extra}\n\tboundary="{boundary}"\n\n'.encode("ascii")
    ]
    if subtype == "mixed":
        chunks.append(b"This is a multi-part message in MIME format.\n")
    for part in parts:
        chunks.append(f"\n--{boundary}\n".encode("ascii"))
        chunks.append(part)
    chunks.append(f"\n--{boundary}--\n".encode("ascii"))
    return b"".join(chunks)


def _png(rng: random.Random, width: int, height: int) -> bytes:
    """Return a valid RGB PNG of noise: incompressible, so its size follows its pixels."""
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def _inline_image(rng: random.Random, content_id: str) -> bytes:
    data = _png(rng, rng.randrange(24, 72), rng.randrange(16, 48))
    name = f"screenshot-{rng.randrange(1, 99)}.png"
    return (
        f'Content-Type: image/png; name="{name}"\n'
        "Content-Transfer-Encoding: base64\n"
        f'Content-Disposition: inline; filename="{name}"\n'
        f"Content-ID: <{content_id}>\n\n"
    ).encode("ascii") + base64.encodebytes(data)


def _attachment_part(rng: random.Random, kind: str, size: int) -> bytes:
    stamp = f"{rng.randrange(2025, 2027)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
    if kind == "pdf":
        stream = rng.randbytes(size)
        data = (
            b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            + f"3 0 obj << /Length {size} >> stream\n".encode()
            + stream
            + b"\nendstream endobj\n%%EOF\n"
        )
        return _binary_attachment("application/pdf", f"invoice-{stamp}.pdf", data, rng)
    if kind == "png":
        side = max(8, int(math.sqrt(size / 3)))
        return _binary_attachment("image/png", f"screen-{stamp}.png", _png(rng, side, side), rng)
    if kind == "xlsx":
        data = b"PK\x03\x04" + rng.randbytes(size)
        name = rng.choice((f"report-{stamp}.xlsx", "Übersicht.xlsx", "récapitulatif.xlsx"))
        return _binary_attachment(
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", name, data, rng
        )
    if kind == "json":
        data = ("[\n" + ",\n".join(_lines(rng, _trace_record, size)) + "\n]\n").encode()
        return _binary_attachment(
            "application/json", f"trace-{rng.getrandbits(24):06x}.json", data, rng
        )

    lines = _lines(rng, _payment_row if kind == "csv" else _log_line, size, stamp)
    data = ("\n".join(lines) + "\n").encode("ascii")
    if kind == "csv":
        header = b"id,date,amount,currency,status\n"
        return _text_attachment("text/csv", f"export-{stamp}.csv", header + data)
    return _text_attachment("text/plain", f"api-{stamp}.log", data)


def _lines(rng: random.Random, make: Any, size: int, stamp: str = "") -> list[str]:
    """Return lines from `make(bits, stamp)` until they add up to `size` characters.

    Each line takes its fields from one 64-bit draw, which keeps large text
    attachments cheap to generate.
    """
    lines = []
    length = 0
    while length < size:
        line = make(rng.getrandbits(64), stamp)
        lines.append(line)
        length += len(line) + 1
    return lines


def _trace_record(bits: int, _stamp: str) -> str:
    status = (200, 201, 401, 500, 504)[bits % 5]
    return f'  {{"span": "{bits:016x}", "ms": {(bits >> 8) % 30_000 + 1}, "status": {status}}}'


def _payment_row(bits: int, stamp: str) -> str:
    status = ("paid", "open", "refunded")[bits % 3]
    amount = f"{(bits >> 30) % 500 + 1}.{(bits >> 40) % 100:02d}"
    return f"{1_000_000 + (bits >> 4) % 9_000_000},{stamp},{amount},EUR,{status}"


def _log_line(bits: int, stamp: str) -> str:
    level = ("INFO ", "WARN ", "ERROR")[bits % 3]
    status = (200, 201, 502, 504)[(bits >> 2) % 4]
    clock = f"{(bits >> 4) % 24:02d}:{(bits >> 10) % 60:02d}:{(bits >> 16) % 60:02d}"
    return (
        f"{stamp}T{clock}Z {level} api req={(bits >> 22) & 0xFFFFFF:06x} "
        f"POST /v2/charges status={status} ms={(bits >> 46) % 30_000 + 5}"
    )


def _binary_attachment(content_type: str, filename: str, data: bytes, rng: random.Random) -> bytes:
    return (
        f"Content-Type: {content_type}; {_filename_parameter('name', filename)}\n"
        "Content-Transfer-Encoding: base64\n"
        f"Content-Disposition: attachment; {_filename_parameter('filename', filename)}\n\n"
    ).encode("ascii") + base64.encodebytes(data)


def _text_attachment(content_type: str, filename: str, data: bytes) -> bytes:
    return (
        f'Content-Type: {content_type}; charset=us-ascii; name="{filename}"\n'
        "Content-Transfer-Encoding: 7bit\n"
        f'Content-Disposition: attachment; filename="{filename}"\n\n'
    ).encode("ascii") + data


def _filename_parameter(name: str, filename: str) -> str:
    """Return `name="file"`, or the RFC 2231 form `name*=utf-8''…` for a non-ASCII name."""
    if filename.isascii():
        return f'{name}="{filename}"'
    quoted = "".join(
        chr(byte) if chr(byte).isalnum() and byte < 128 or chr(byte) in ".-_" else f"%{byte:02X}"
        for byte in filename.encode("utf-8")
    )
    return f"{name}*=utf-8''{quoted}"


def _encoded_header(text: str, charset: str, offset: int) -> str:
    """Return a header value as written: ASCII as is, anything else as RFC 2047 encoded words."""
    if text.isascii():
        return text
    return Header(text, Charset(charset), header_name=" " * offset).encode()


def _address_header(name: str, address: str, charset: str) -> str:
    if name.isascii():
        return f"{name} <{address}>"
    return f"{Header(name, Charset(charset)).encode()} <{address}>"


def _received_line(
    rng: random.Random,
    host: str,
    ip: str,
    tenants: tuple[str, ...],
    moment: datetime,
    via: str | None,
    recipient: str | None = None,
) -> str:
    queue_id = "".join(
        rng.choice("0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjkmnpqrstvwxyz") for _ in range(12)
    )
    target = f"\n\tfor <{recipient}>" if recipient else ""
    relay = via or _MX
    return (
        f"Received: from {host} ({host} [{ip}])\n\tby {relay} (Postfix) with ESMTPS id {queue_id}"
        f"{target}; {format_datetime(moment.astimezone(UTC))}"
    )


def _insert_received(raw: bytes, line: str, crlf: bool) -> bytes:
    """Put a Received line above the message's first one, as the backup MX's relay would."""
    newline = b"\r\n" if crlf else b"\n"
    encoded = line.encode("ascii").replace(b"\n", newline) + newline
    position = raw.find(newline + b"Received:")
    if position < 0:
        return encoded + raw
    return raw[: position + len(newline)] + encoded + raw[position + len(newline) :]


def _authentication_results(sender: _Person, how: str) -> str:
    domain = sender.company.domain
    if how == "spam":
        return (
            f"Authentication-Results: {_MX};\n\tdkim=none (message not signed);\n"
            f"\tspf=softfail smtp.mailfrom={sender.address};\n\tdmarc=none header.from={domain}"
        )
    return (
        f"Authentication-Results: {_MX};\n\tdkim=pass header.d={domain} header.s=mail2025;\n"
        f"\tspf=pass smtp.mailfrom={sender.address};\n\tdmarc=pass header.from={domain}"
    )


# -- writing -----------------------------------------------------------------------


def iter_messages(
    count: int, seed: int, mix: Mix | None = None, start: datetime = DEFAULT_START
) -> Iterator[SynthMessage]:
    """Yield `count` messages in arrival order; the same arguments give the same messages."""
    for message, _ in _generate(count, seed, mix or Mix(), start):
        yield message


def _generate(
    count: int, seed: int, mix: Mix, start: datetime
) -> Iterator[tuple[SynthMessage, Counter[str]]]:
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    return _Generator(seed, mix, start).messages(count)


def synthesize(
    count: int,
    seed: int,
    out: str | Path,
    *,
    format: Format = "mbox",
    mix: Mix | None = None,
    start: datetime = DEFAULT_START,
) -> SynthSummary:
    """Write a corpus of `count` messages to `out`, one message at a time; return its summary.

    `format` "mbox" writes one mboxrd file, where lines starting with ">*From "
    get one more ">". `format` "folder" writes one ``NNNNNNN-kind.eml`` file per
    message, and the names sort in arrival order. `out` must not exist yet, or be an empty
    file or folder; anything else raises `ValueError` so no corpus is mixed with
    another.
    """
    if format not in ("mbox", "folder"):
        raise ValueError(f"format must be 'mbox' or 'folder', got {format!r}")
    out = Path(out)
    _check_target(out, format)
    summary = SynthSummary(seed=seed)
    messages = _generate(count, seed, mix or Mix(), start)
    if format == "mbox":
        with out.open("wb") as file:
            for message, features in messages:
                _write_mbox_entry(file, message)
                summary.add(message, features)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for message, features in messages:
            (out / f"{message.serial + 1:07d}-{message.label}.eml").write_bytes(message.raw)
            summary.add(message, features)
    return summary


def _check_target(out: Path, format: Format) -> None:
    if not out.exists():
        if not out.parent.is_dir():
            raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
        return
    if out.is_dir():
        if format == "mbox":
            raise ValueError(
                f"{out} is a folder; give a file name for an mbox, or use --format folder"
            )
        if any(out.iterdir()):
            raise ValueError(f"folder {out} is not empty; give a new or empty folder")
        return
    if format == "folder":
        raise ValueError(f"{out} is a file; give a folder name for --format folder")
    if out.stat().st_size:
        raise ValueError(f"{out} already exists and is not empty; remove it or give another name")


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def _write_mbox_entry(file: BinaryIO, message: SynthMessage) -> None:
    moment = message.arrived_at.astimezone(UTC)
    separator = (
        f"From {message.envelope_sender} {moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}\n"
    )
    file.write(separator.encode("ascii"))
    body = _FROM_LINE.sub(rb">\1", message.raw)
    file.write(body)
    if not body.endswith(b"\n"):
        file.write(b"\n")
    file.write(b"\n")


# -- the command -------------------------------------------------------------------


def add_command(commands: Any) -> None:
    """Add the `synth` subcommand to the `ticketflow` command's subparsers."""
    synth = commands.add_parser(
        "synth",
        help="write a synthetic corpus of support mail (same seed, same bytes)",
        description="Write COUNT realistic support messages to OUT as an mbox or a folder of .eml "
        "files, with a controllable mix of new tickets, replies, duplicates, auto-replies and "
        "spam. "
        "Prints a JSON summary with the counts the flow should report for the corpus.",
    )
    synth.add_argument("out", type=Path, help="the mbox file or folder to write (new or empty)")
    synth.add_argument("--count", type=int, required=True, help="number of messages to write")
    synth.add_argument("--seed", type=int, required=True, help="seed of every random choice")
    synth.add_argument(
        "--format",
        choices=("mbox", "folder"),
        default="mbox",
        help="an mboxrd file (default) or a folder of .eml files",
    )
    synth.add_argument(
        "--mix", type=Path, help="TOML or JSON mix spec; keys left out keep their defaults"
    )
    synth.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one mix value, e.g. kinds.duplicate=0.1, html=0.8 or "
        "tenants=acme,globex; repeatable, applied after --mix",
    )
    synth.add_argument(
        "--start", help="arrival time of the corpus, RFC 3339 (default 2026-03-02T08:00:00Z)"
    )
    synth.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run `ticketflow synth`: write the corpus and print its summary as JSON."""
    if args.count < 0:
        raise ValueError(f"--count {args.count}: use 0 or more")
    mix = load_mix(args.mix) if args.mix else Mix()
    mix = mix_from_mapping(_settings_from_flags(args.settings), base=mix, origin="--set")
    start = DEFAULT_START
    if args.start:
        try:
            start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--start {args.start!r}: use an RFC 3339 time such as 2026-03-02T08:00:00Z"
            ) from None
        if start.tzinfo is None:
            raise ValueError(f"--start {args.start!r}: give a UTC offset or Z")
    summary = synthesize(args.count, args.seed, args.out, format=args.format, mix=mix, start=start)
    print(
        json.dumps({"path": str(args.out), "format": args.format, **summary.as_dict()}), flush=True
    )
    return 0


def _settings_from_flags(flags: list[str]) -> dict[str, Any]:
    """Turn `--set KEY=VALUE` flags into a mix mapping; a dotted key names a table entry."""
    data: dict[str, Any] = {}
    for flag in flags:
        key, equals, value = flag.partition("=")
        if not equals or not key:
            raise MixError(f"--set {flag!r}: use KEY=VALUE, e.g. kinds.duplicate=0.1")
        if key == "tenants":
            data["tenants"] = [tenant.strip() for tenant in value.split(",") if tenant.strip()]
            continue
        try:
            number: Any = float(value)
        except ValueError:
            raise MixError(f"--set {flag!r}: {value!r} is not a number") from None
        table, dot, entry = key.partition(".")
        if dot:
            data.setdefault(table, {})[entry] = number
        else:
            data[key] = number
    return data


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m ticketflow.synth")
    add_command(parser.add_subparsers(dest="command", required=True))
    sys.exit(run_command(parser.parse_args(["synth", *sys.argv[1:]])))
