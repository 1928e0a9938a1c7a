"""Settings: the TOML config file, validated against typed defaults.

Every key has a default that works for the demo, so an empty file (or none) is a
valid config. An unknown key or a value of the wrong type raises `ConfigError`
with the key's dotted path, what was expected, what was found, and a suggestion
when the key looks like a typo of a known one.

Secrets never live in the file. A table may name an environment variable to read
(for example `token_env = "TICKETFLOW_JIRA_TOKEN"`), and only `TICKETFLOW_*`
variables are accepted there.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

# Upper bound on any duration setting: larger values overflow datetime arithmetic.
MAX_SECONDS = 1e9

DEFAULT_TICKET_KEY_PATTERN = r"\[([A-Z][A-Z0-9]{1,9}-[0-9]{1,9})\]"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class RoutingSettings:
    """Rules that map recipients to tenants."""

    # Recipients on these domains are our support mailboxes.
    inbound_domains: tuple[str, ...] = ("support.example.com",)
    # Tenant for mail that names no mailbox on an inbound domain.
    default_tenant: str = "default"
    # Tenants named here get their own metric label; others are reported as "other".
    known_tenants: tuple[str, ...] = ()
    # When set, only these tenants exist: mail for any other falls to the next
    # routing rule and finally to default_tenant, so mail cannot create tenants.
    allowed_tenants: tuple[str, ...] = ()
    # Upper bound on tenant copies of one message (the first ones in name order).
    max_tenants_per_message: int = 10


@dataclass(frozen=True)
class ThreadingSettings:
    """Rules by which replies find their tickets."""

    # Regular expression with one group: the ticket key inside a subject.
    key_pattern: str = DEFAULT_TICKET_KEY_PATTERN
    # Seconds a reply whose parent is unknown waits for it before opening its own ticket.
    orphan_wait: float = 300.0
    # Seconds of event time inside which the subject heuristic may join two messages.
    subject_window: float = 7 * 24 * 3600.0
    # Mail domains whose users share no organization, so a shared domain proves nothing.
    free_mail_domains: tuple[str, ...] = (
        "gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com",
        "live.com", "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com",
        "gmx.de", "gmx.net", "web.de", "mail.ru", "yandex.ru", "qq.com", "163.com",
    )
    # Domains of our own Message-IDs (the ticket systems' notifications); mail answering
    # one of them is an echo and never opens a ticket.
    own_message_id_domains: tuple[str, ...] = ()
    # Upper bound on References ids read from one message, so a huge header costs bounded work.
    max_references: int = 200
    # Seconds an entry of the thread index is kept (event time in memory, Redis's clock in
    # Redis), at least dedupe.window; older lookups fall back to the store.
    index_ttl: float = 30 * 24 * 3600.0


@dataclass(frozen=True)
class DedupeSettings:
    """The window inside which a second delivery of the same message is dropped."""

    # Seconds of event time a delivery is remembered.
    window: float = 24 * 3600.0
    # Upper bound on remembered deliveries; the oldest are forgotten first beyond it.
    max_entries: int = 1_000_000


@dataclass(frozen=True)
class GateSettings:
    """When a ticket is held for review and when mail opens nothing."""

    # Spam score at or above which a ticket is held for review (the header's own units).
    spam_threshold: float = 5.0
    # What list and bulk mail does: "review", "open" or "suppress".
    bulk_policy: Literal["review", "open", "suppress"] = "review"
    # Automatic-looking messages allowed per sender inside `auto_reply_window`.
    auto_reply_limit: int = 5
    auto_reply_window: float = 3600.0


@dataclass(frozen=True)
class TrustSettings:
    """Trusted sources of Authentication-Results headers."""

    # authserv-ids of our own receiving servers; empty means the topmost header counts.
    authserv_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsSettings:
    """Size limits on input."""

    # Larger messages become dead letters "too_large" with their headers kept.
    max_message_bytes: int = 25 * 1024 * 1024


@dataclass(frozen=True)
class StateSettings:
    """Location of the state that several processes share."""

    # redis://HOST:PORT/DB; required for more than one process, unused otherwise.
    redis_url: str = ""
    # Name of a TICKETFLOW_* environment variable holding the URL instead, for a
    # URL with a password in it.
    redis_url_env: str = ""
    # Prefix of every Redis key, so several flows can share one Redis.
    namespace: str = "ticketflow"


@dataclass(frozen=True)
class KafkaSettings:
    """librdkafka settings passed through by their own names (`security.protocol`, …).

    A secret is never written in the file: a key ending in `_env` names the
    `TICKETFLOW_*` environment variable that holds it (`"sasl.password_env" =
    "TICKETFLOW_KAFKA_PASSWORD"`), and is resolved when the client is built.
    """

    settings: tuple[tuple[str, str], ...] = ()

    def client_settings(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the settings for a librdkafka client, with secrets read from the environment."""
        environ = os.environ if environ is None else environ
        resolved: dict[str, str] = {}
        for key, value in self.settings:
            if not key.endswith("_env"):
                resolved[key] = value
                continue
            if value not in environ:
                raise ConfigError(
                    f"kafka.{key} names the environment variable {value}, which is not set; "
                    f"export {value} with the secret"
                )
            resolved[key.removesuffix("_env")] = environ[value]
        return resolved


@dataclass(frozen=True)
class MetricsSettings:
    """The address of each process's Prometheus metrics, /healthz and /readyz."""

    # Port of process 0; process i of a cluster serves port + i. 0 turns the server off.
    port: int = 9464
    # Address the server binds. 127.0.0.1 keeps it on this machine; a Prometheus in
    # another container or on another host needs 0.0.0.0 (or this host's address).
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class TracingSettings:
    """Where OpenTelemetry spans of the main job go; see `ticketflow.tracing`."""

    # Off by default: the flow then creates no spans at all.
    enabled: bool = False
    # "otlp" sends OTLP over HTTP (needs the `tracing` extra); "console" prints spans to stdout.
    exporter: Literal["otlp", "console"] = "otlp"
    # The OTLP/HTTP traces URL; "" uses OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    # http://localhost:4318/v1/traces.
    endpoint: str = ""


SinkKind = Literal["none", "jira", "zendesk", "servicenow", "webhook"]


@dataclass(frozen=True)
class PriorityNames:
    """The external system's name for each ticketflow priority."""

    P0: str = ""
    P1: str = ""
    P2: str = ""
    P3: str = ""
    P4: str = ""

    def name_of(self, priority: str, default: PriorityNames) -> str:
        """Return the configured name of `priority`, else `default`'s, else the priority itself."""
        return getattr(self, priority, "") or getattr(default, priority, "") or priority


@dataclass(frozen=True)
class JiraSettings:
    """Jira Cloud or Server, through the `jira` package."""

    # Base URL of the site, e.g. https://example.atlassian.net.
    url: str = ""
    # Account that owns the API token (Cloud) or the user name (Server).
    user: str = ""
    # TICKETFLOW_* variable holding the API token or password.
    token_env: str = "TICKETFLOW_JIRA_TOKEN"
    # Project key and issue type of new issues, unless a mapping rule sets them.
    project: str = "SUP"
    issue_type: str = "Task"
    # Custom field (customfield_NNNNN) holding ticketflow's ticket id, so a restart finds
    # the issue; "" keeps the id in a label "ticketflow-<id>" instead.
    external_id_field: str = ""
    # Custom field receiving the sender's address, for senders who are no Jira users;
    # "" leaves the reporter to Jira and names the sender in the description.
    reporter_field: str = ""
    # Jira priority names; empty entries use Highest, High, Medium, Low, Lowest.
    priorities: PriorityNames = field(default_factory=PriorityNames)
    # Issue link type used when two tickets turn out to be one thread.
    link_type: str = "Duplicate"


@dataclass(frozen=True)
class ZendeskSettings:
    """Zendesk Support, over its REST API."""

    # Base URL, e.g. https://acme.zendesk.com.
    url: str = ""
    # Agent email of the API token (the token is sent as "EMAIL/token").
    email: str = ""
    token_env: str = "TICKETFLOW_ZENDESK_TOKEN"
    # Zendesk priority names; empty entries use urgent, high, normal, low, low.
    priorities: PriorityNames = field(default_factory=PriorityNames)


@dataclass(frozen=True)
class ServiceNowSettings:
    """ServiceNow incidents, over the Table and Attachment APIs."""

    # Instance URL, e.g. https://acme.service-now.com.
    url: str = ""
    user: str = ""
    password_env: str = "TICKETFLOW_SERVICENOW_PASSWORD"
    # Defaults for new incidents, unless a mapping rule sets them.
    assignment_group: str = ""
    category: str = "inquiry"
    # Impact (1 high to 3 low) per priority; empty entries use 1, 1, 2, 3, 3.
    impacts: PriorityNames = field(default_factory=PriorityNames)


@dataclass(frozen=True)
class WebhookSettings:
    """An outgoing webhook for teams with their own ticket API."""

    url: str = ""
    # TICKETFLOW_* variable holding the HMAC-SHA256 key that signs `timestamp.body`.
    secret_env: str = "TICKETFLOW_WEBHOOK_SECRET"


@dataclass(frozen=True)
class RuleConditions:
    """When a mapping rule applies: every non-empty list must contain the ticket's value."""

    tenant: tuple[str, ...] = ()
    component: tuple[str, ...] = ()
    priority: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    status: tuple[str, ...] = ()


@dataclass(frozen=True)
class MappingRule:
    """Fields a matching ticket gets in the external system.

    Rules are read in order: for a single value (project, issue_type, …) the first
    matching rule that sets it wins; lists (labels, components, tags) collect the
    values of every matching rule. An empty value sets nothing.
    """

    when: RuleConditions = field(default_factory=RuleConditions)
    # Jira
    project: str = ""
    issue_type: str = ""
    components: tuple[str, ...] = ()
    # Jira labels and Zendesk tags
    labels: tuple[str, ...] = ()
    # Zendesk
    group_id: str = ""
    # ServiceNow
    assignment_group: str = ""
    category: str = ""
    # Any sink: overrides the priority name sent for this ticket
    priority_name: str = ""


@dataclass(frozen=True)
class SinkSettings:
    """The external ticket system fed on top of the store (the local ledger)."""

    # "none" keeps tickets in the store only.
    kind: SinkKind = "none"
    # Deliveries attempted per call; a write batch delivers at most this many.
    batch_size: int = 200
    # Undelivered messages allowed while the sink is rate limited or down; beyond it the
    # flow waits for the sink instead of reading more mail.
    max_backlog: int = 10_000
    # Seconds one HTTP request may take.
    timeout: float = 10.0
    # Tries of one request on timeouts, connection errors and 5xx responses.
    retries: int = 4
    # First delay between tries in seconds; it doubles per try.
    backoff: float = 0.5
    # Seconds the end of a finite run waits for undelivered messages to get through.
    drain_timeout: float = 120.0
    jira: JiraSettings = field(default_factory=JiraSettings)
    zendesk: ZendeskSettings = field(default_factory=ZendeskSettings)
    servicenow: ServiceNowSettings = field(default_factory=ServiceNowSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    rules: tuple[MappingRule, ...] = ()


@dataclass(frozen=True)
class AttachmentSettings:
    """Checks and storage applied to attachments before they reach a ticket."""

    # Folder of the content-addressed attachment store; "" keeps no attachment bytes
    # (the event lists attachments by name, type, size and SHA-256 only).
    store: str = ""
    # Base of the links written into tickets and events for stored files; "" uses file:// paths.
    base_url: str = ""
    # Larger files are refused; a message's files beyond the total are refused too. With
    # clamd, keep max_file_bytes within its StreamMaxLength, or larger files are refused
    # as scan_unavailable.
    max_file_bytes: int = 20 * 1024 * 1024
    max_message_bytes: int = 25 * 1024 * 1024
    # Checked against the sniffed content type (and the declared one); "*" wildcards
    # a subtype ("image/*"). An empty allow list allows every type not denied.
    allow_types: tuple[str, ...] = ()
    deny_types: tuple[str, ...] = (
        "application/x-dosexec", "application/x-msdownload", "application/x-executable",
        "application/x-sharedlib", "application/x-mach-binary", "application/java-archive",
        "application/vnd.microsoft.portable-executable", "application/x-msi",
        "application/x-ms-shortcut", "application/x-iso9660-image", "application/java-vm",
        "application/hta", "application/x-ms-installer", "application/vnd.ms-cab-compressed",
        "application/javascript", "text/javascript", "application/x-javascript",
        "text/vbscript", "application/x-sh", "application/x-bat",
    )
    # clamd address for malware scanning: "tcp://127.0.0.1:3310" or "unix:///run/clamav/clamd.ctl";
    # "" scans nothing.
    clamd: str = ""
    # Seconds one connect, send or read of a scan may take before the file is refused as
    # scan_unavailable (and scans pause for 10 s).
    clamd_timeout: float = 30.0
    # Unpack TNEF (winmail.dat) attachments into the files they carry.
    unpack_tnef: bool = True
    # Clean HTML bodies (scripts, event handlers, remote content) before they reach a ticket.
    sanitize_html: bool = True


# The kinds `[logging] mask` may name: email addresses, bearer tokens and API keys,
# card-like numbers (13 to 19 digits passing the Luhn check), passwords in URLs.
MASK_KINDS = ("addresses", "tokens", "cards", "urls")


@dataclass(frozen=True)
class LoggingSettings:
    """The format of log lines and the kinds of data masked in them."""

    # "text" reads best in a terminal; "json" writes one JSON object per line for a
    # log collector.
    format: Literal["text", "json"] = "text"
    # Minimum level written; `-v` lowers it to "debug".
    level: Literal["debug", "info", "warning", "error"] = "warning"
    # What is replaced in every line before it is written; [] masks nothing.
    mask: tuple[str, ...] = MASK_KINDS


_SECRET_WORDS = ("password", "secret", "token", "key.pem", "private", "jaas", "credential")


def state_redis_url(state: StateSettings, environ: Mapping[str, str] | None = None) -> str:
    """Return the Redis URL to use: `redis_url`, or the variable `redis_url_env` names."""
    if not state.redis_url_env:
        return state.redis_url
    environ = os.environ if environ is None else environ
    if state.redis_url_env not in environ:
        raise ConfigError(
            f"state.redis_url_env names the environment variable {state.redis_url_env}, which is "
            f"not set; export {state.redis_url_env} with the Redis URL"
        )
    return environ[state.redis_url_env]


def mask_url_password(url: str) -> str:
    """Replace the password of a URL (`scheme://user:secret@host`) with `***`."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


@dataclass(frozen=True)
class Settings:
    """The whole validated config."""

    routing: RoutingSettings = field(default_factory=RoutingSettings)
    threading: ThreadingSettings = field(default_factory=ThreadingSettings)
    dedupe: DedupeSettings = field(default_factory=DedupeSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    state: StateSettings = field(default_factory=StateSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate a TOML config file; `None` gives the defaults."""
    if path is None:
        return Settings()

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.start}); save it as UTF-8"
        ) from exc

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc

    return settings_from_mapping(data, origin=str(path))


def settings_from_mapping(data: dict[str, Any], origin: str = "config") -> Settings:
    """Validate a parsed config mapping against the typed defaults."""
    settings = _build(Settings, data, prefix="", origin=origin)
    _check_semantics(settings, origin)
    return settings


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """Return the effective values as plain data, tuples as lists, for printing."""
    return _plain(dataclasses.asdict(settings))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _build(cls: type, data: Any, prefix: str, origin: str) -> Any:
    table_name = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"'{table_name}' in {origin} must be a table, found {_describe(data)}")

    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(_unknown_key_message(prefix + key, key, known, origin))

    values = {}
    for name in known:
        if name not in data:
            continue
        dotted = prefix + name
        hint = hints[name]
        if hint is KafkaSettings:
            values[name] = _kafka_settings(data[name], dotted, origin)
        elif dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], dotted + ".", origin)
        else:
            values[name] = _coerce(hint, data[name], dotted, origin)
    return cls(**values)


def _kafka_settings(data: Any, dotted: str, origin: str) -> KafkaSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"'{dotted}' in {origin} must be a table, found {_describe(data)}")

    pairs = []
    for key, value in sorted(data.items()):
        if isinstance(value, dict) or isinstance(value, list):
            raise ConfigError(
                f"invalid value for '{dotted}.{key}' in {origin}: librdkafka settings are single "
                f"values; quote dotted names, e.g. \"{key}.x\" = \"…\""
            )
        if isinstance(value, bool):
            value = "true" if value else "false"
        if key.endswith("_env"):
            if not str(value).startswith("TICKETFLOW_"):
                raise ConfigError(
                    f"invalid value for '{dotted}.{key}' in {origin}: {value!r}; name a "
                    "TICKETFLOW_* environment variable"
                )
        elif any(word in key.lower() for word in _SECRET_WORDS):
            raise ConfigError(
                f"'{dotted}.{key}' in {origin} looks like a secret, which must not live in the file; "
                f"write \"{key}_env\" = \"TICKETFLOW_…\" and export that variable"
            )
        pairs.append((key, str(value)))
    return KafkaSettings(tuple(pairs))


def _unknown_key_message(dotted: str, key: str, known: set[str], origin: str) -> str:
    message = f"unknown key '{dotted}' in {origin}"
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean '{close[0]}'?"
    return f"{message}; known keys here: {', '.join(sorted(known))}"


def _coerce(hint: Any, value: Any, dotted: str, origin: str) -> Any:
    origin_type = get_origin(hint)

    if origin_type is Literal:
        choices = get_args(hint)
        if value not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {value!r}; use one of {allowed}"
            )
        return value

    if origin_type is tuple and dataclasses.is_dataclass(get_args(hint)[0]):
        if not isinstance(value, list):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected a list of tables "
                f"([[{dotted}]]), found {_describe(value)}"
            )
        item_type = get_args(hint)[0]
        return tuple(
            _build(item_type, item, f"{dotted}[{index}].", origin) for index, item in enumerate(value)
        )

    if origin_type is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected a list of strings, "
                f"found {_describe(value)}"
            )
        return tuple(value)

    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected a number, "
                f"found {_describe(value)}"
            )
        if not math.isfinite(value):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {value!r}; use a finite number"
            )
        return float(value)

    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected an integer, "
                f"found {_describe(value)}"
            )
        return value

    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected a string, "
                f"found {_describe(value)}"
            )
        return value

    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: expected true or false, "
                f"found {_describe(value)}"
            )
        return value

    raise TypeError(f"no coercion for type {hint!r} of '{dotted}'")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _check_semantics(settings: Settings, origin: str) -> None:
    _check_pattern(settings.threading.key_pattern, origin)

    for dotted, number in (
        ("gate.spam_threshold", settings.gate.spam_threshold),
    ):
        if abs(number) > MAX_SECONDS:
            raise ConfigError(f"invalid value for '{dotted}' in {origin}: {number} is out of range")

    for dotted, number in (
        ("threading.orphan_wait", settings.threading.orphan_wait),
        ("threading.subject_window", settings.threading.subject_window),
        ("dedupe.window", settings.dedupe.window),
        ("threading.index_ttl", settings.threading.index_ttl),
        ("gate.auto_reply_window", settings.gate.auto_reply_window),
    ):
        if number < 0:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {number} is negative; "
                "use a number of seconds, 0 or more"
            )
        if number > MAX_SECONDS:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {number:g} seconds is more than "
                f"{MAX_SECONDS:g} (about 30 years); use a smaller number of seconds"
            )

    if settings.gate.auto_reply_limit < 0:
        raise ConfigError(
            f"invalid value for 'gate.auto_reply_limit' in {origin}: "
            f"{settings.gate.auto_reply_limit} is negative; use 0 (refuse all) or more"
        )

    for dotted, count in (
        ("threading.max_references", settings.threading.max_references),
        ("dedupe.max_entries", settings.dedupe.max_entries),
        ("limits.max_message_bytes", settings.limits.max_message_bytes),
        ("routing.max_tenants_per_message", settings.routing.max_tenants_per_message),
    ):
        if count < 1:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {count}; use a positive integer"
            )

    _check_redis_url(settings.state, origin)
    _check_metrics(settings.metrics, origin)
    _check_mask(settings.logging.mask, origin)
    _check_tracing(settings.tracing, origin)
    _check_sink(settings.sink, origin)
    _check_attachments(settings.attachments, origin)

    if not settings.routing.default_tenant.strip():
        raise ConfigError(
            f"invalid value for 'routing.default_tenant' in {origin}: it is empty; "
            "name the tenant for mail addressed to no inbound domain"
        )


def _check_metrics(metrics: MetricsSettings, origin: str) -> None:
    if not 0 <= metrics.port <= 65535:
        raise ConfigError(
            f"invalid value for 'metrics.port' in {origin}: {metrics.port}; use a port from "
            "1 to 65535, or 0 to turn the metrics server off"
        )
    if not metrics.host.strip():
        raise ConfigError(
            f"invalid value for 'metrics.host' in {origin}: it is empty; use 127.0.0.1 for "
            "this machine only, or 0.0.0.0 for every interface"
        )


def _check_tracing(tracing: TracingSettings, origin: str) -> None:
    if tracing.endpoint and not tracing.endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"invalid value for 'tracing.endpoint' in {origin}: {tracing.endpoint!r}; use an "
            "http:// or https:// URL such as http://127.0.0.1:4318/v1/traces, or \"\" for the default"
        )


def _check_mask(mask: tuple[str, ...], origin: str) -> None:
    for kind in mask:
        if kind not in MASK_KINDS:
            raise ConfigError(
                f"invalid value for 'logging.mask' in {origin}: {kind!r}; use a list of "
                f"{', '.join(repr(known) for known in MASK_KINDS)} ([] masks nothing)"
            )


def _check_redis_url(state: StateSettings, origin: str) -> None:
    redis_url = state.redis_url
    if redis_url and state.redis_url_env:
        raise ConfigError(
            f"'state.redis_url' and 'state.redis_url_env' are both set in {origin}; keep one"
        )
    if state.redis_url_env and not state.redis_url_env.startswith("TICKETFLOW_"):
        raise ConfigError(
            f"invalid value for 'state.redis_url_env' in {origin}: {state.redis_url_env!r}; "
            "name a TICKETFLOW_* environment variable"
        )
    if not redis_url:
        return
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"invalid value for 'state.redis_url' in {origin}: {mask_url_password(redis_url)!r}; "
            "use redis://HOST:PORT/DB (or rediss:// for TLS)"
        )
    if mask_url_password(redis_url) != redis_url:
        raise ConfigError(
            f"'state.redis_url' in {origin} contains a password, which must not live in the file; "
            "put the URL in a TICKETFLOW_* variable and write redis_url_env = \"TICKETFLOW_REDIS_URL\""
        )


def _check_pattern(pattern: str, origin: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"invalid value for 'threading.key_pattern' in {origin}: {exc}; "
            "give a Python regular expression"
        ) from exc
    if compiled.groups != 1:
        raise ConfigError(
            f"invalid value for 'threading.key_pattern' in {origin}: it has {compiled.groups} "
            "groups; use exactly one group around the ticket key, e.g. "
            r"'\[([A-Z]+-[0-9]+)\]'"
        )


_SINK_URLS = {"jira": "https://example.atlassian.net", "zendesk": "https://acme.zendesk.com",
              "servicenow": "https://acme.service-now.com", "webhook": "https://tickets.example.com/hook"}
_PRIORITIES = ("P0", "P1", "P2", "P3", "P4")


def _check_sink(sink: SinkSettings, origin: str) -> None:
    _check_positive_numbers(origin, (
        ("sink.batch_size", sink.batch_size), ("sink.max_backlog", sink.max_backlog),
        ("sink.retries", sink.retries), ("sink.timeout", sink.timeout),
    ))
    for dotted, seconds in (("sink.backoff", sink.backoff), ("sink.drain_timeout", sink.drain_timeout)):
        if not 0 <= seconds <= MAX_SECONDS:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {seconds:g}; use a number of seconds, 0 or more"
            )
    for dotted, variable in (
        ("sink.jira.token_env", sink.jira.token_env),
        ("sink.zendesk.token_env", sink.zendesk.token_env),
        ("sink.servicenow.password_env", sink.servicenow.password_env),
        ("sink.webhook.secret_env", sink.webhook.secret_env),
    ):
        if not variable.startswith("TICKETFLOW_"):
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {variable!r}; name a TICKETFLOW_* "
                "environment variable that holds the secret"
            )
    if sink.kind != "none":
        url = getattr(sink, sink.kind).url
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"invalid value for 'sink.{sink.kind}.url' in {origin}: {url!r}; [sink] kind is "
                f"{sink.kind!r}, so give its base URL, e.g. {_SINK_URLS[sink.kind]!r}"
            )
    for index, rule in enumerate(sink.rules):
        _check_rule(rule, f"sink.rules[{index}]", sink.kind, origin)


def _check_rule(rule: MappingRule, dotted: str, kind: str, origin: str) -> None:
    from ticketflow.operators.mapping import FIELD_SINKS, fields_set_by

    for priority in rule.when.priority:
        if priority not in _PRIORITIES:
            raise ConfigError(
                f"invalid value for '{dotted}.when.priority' in {origin}: {priority!r}; use P0 to P4"
            )
    for tenant in rule.when.tenant:
        if tenant != tenant.lower():
            raise ConfigError(
                f"invalid value for '{dotted}.when.tenant' in {origin}: {tenant!r}; tenants are "
                f"lower case, so write {tenant.lower()!r}"
            )
    for status in rule.when.status:
        if status not in ("open", "review"):
            raise ConfigError(
                f"invalid value for '{dotted}.when.status' in {origin}: {status!r}; use \"open\" or \"review\""
            )
    if kind == "none":
        return
    if kind == "jira":
        for label in rule.labels:
            if not label or any(character.isspace() for character in label) or len(label) > 255:
                raise ConfigError(
                    f"invalid value for '{dotted}.labels' in {origin}: {label!r}; Jira labels "
                    f"are 1 to 255 characters without spaces, e.g. "
                    f"{'-'.join(label.split())[:255] or 'a-label'!r}"
                )
    for name in fields_set_by(rule):
        readers = FIELD_SINKS[name]
        if kind not in readers:
            raise ConfigError(
                f"'{dotted}.{name}' in {origin} is read by {', '.join(sorted(readers))} only, "
                f"and [sink] kind is {kind!r}; remove it or change the kind"
            )


def _check_attachments(attachments: AttachmentSettings, origin: str) -> None:
    _check_positive_numbers(origin, (
        ("attachments.max_file_bytes", attachments.max_file_bytes),
        ("attachments.max_message_bytes", attachments.max_message_bytes),
    ), upper=float(2**62))
    _check_positive_numbers(origin, (("attachments.clamd_timeout", attachments.clamd_timeout),))
    for dotted, types in (("attachments.allow_types", attachments.allow_types),
                          ("attachments.deny_types", attachments.deny_types)):
        for media_type in types:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/(\*|[a-z0-9][a-z0-9.+-]*)", media_type):
                raise ConfigError(
                    f"invalid value for '{dotted}' in {origin}: {media_type!r}; use lowercase "
                    "types like \"application/pdf\" or \"image/*\""
                )
    clamd = attachments.clamd
    if clamd and not re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+):[0-9]{1,5}|unix:///.+", clamd):
        raise ConfigError(
            f"invalid value for 'attachments.clamd' in {origin}: {clamd!r}; use "
            "\"tcp://HOST:PORT\" or \"unix:///path/to/clamd.sock\", or \"\" to scan nothing"
        )
    if attachments.base_url and not attachments.base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"invalid value for 'attachments.base_url' in {origin}: {attachments.base_url!r}; "
            "use an http(s):// URL under which the store's files are served, or \"\" for file:// links"
        )


def _check_positive_numbers(
    origin: str, values: tuple[tuple[str, float], ...], upper: float = MAX_SECONDS
) -> None:
    for dotted, number in values:
        if number <= 0:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {number:g}; use a positive number"
            )
        if number > upper:
            raise ConfigError(
                f"invalid value for '{dotted}' in {origin}: {number:g} is more than {upper:g}; "
                "use a smaller number"
            )
