"""Static checks of the deployment: docker-compose.yml, the Dockerfile and deploy/.

No Docker engine runs where these tests run, so the files are parsed and checked
against each other and against the code. The flow's command line goes through the
real `ticketflow run` argument parser and its config through `load_settings`. The
broker's size limits are compared with the config's.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ticketflow.cli import _parser as cli_parser
from ticketflow.config import Settings, load_settings
from ticketflow.connectors.clamd import parse_address

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY_CONFIG = "./deploy/ticketflow.toml"
PROMETHEUS_CONFIG = "./deploy/prometheus/prometheus.yml"
GRAFANA_PROVISIONING = "./deploy/grafana/provisioning"

FLOW = "ticketflow"
KAFKA = "kafka"
KAFKA_INIT = "kafka-init"
REDIS = "redis"
CLAMD = "clamd"

# A compose variable reference: ${NAME}, ${NAME:-default}, ${NAME:?message} and the
# forms without the colon.
VARIABLE_REFERENCE = re.compile(
    r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?\}$"
)
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


# --- loading ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def flow_args(services: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """Parse the flow service's command with the CLI's own parser."""
    command = services[FLOW]["command"]
    assert isinstance(command, list), (
        "ticketflow's command should be a YAML list, one argument each"
    )
    args = cli_parser().parse_args([str(part) for part in command])
    assert args.command == "run", (
        f"ticketflow's command should start with `run`, found {command[0]!r}"
    )
    return args


@pytest.fixture(scope="module")
def deploy_settings() -> Settings:
    return load_settings(REPO / DEPLOY_CONFIG)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


# --- helpers ---------------------------------------------------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as strings, from the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in raw)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Return (source, target, read_only) for each volume entry, short or long syntax."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
            continue
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) > 2 else []
        mounts.append((source, target, "ro" in options))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def container_ports(service: dict[str, Any]) -> set[int]:
    """Return the container-side ports a service exposes or publishes."""
    ports = set()
    for entry in (service.get("expose") or []) + (service.get("ports") or []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
            continue
        container_side = str(entry).rsplit(":", 1)[-1]
        ports.add(int(container_side.split("/")[0]))
    return ports


def health_check_command(service: dict[str, Any]) -> str:
    """Return a service's health check as one string, or "" when it has none."""
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return ""
    test = check.get("test") or []
    if isinstance(test, str):
        return test
    if test and test[0] in ("CMD", "CMD-SHELL"):
        test = test[1:]
    return " ".join(test) if test != ["NONE"] else ""


def kafka_listeners(value: str) -> dict[str, tuple[str, int]]:
    """Split `NAME://HOST:PORT,…` into {NAME: (HOST, PORT)}. An empty host means all interfaces."""
    listeners = {}
    for item in value.split(","):
        name, address = item.strip().split("://", 1)
        host, port = address.rsplit(":", 1)
        listeners[name] = (host, int(port))
    return listeners


def kafka_input(value: str) -> tuple[list[str], str]:
    """Split `kafka://HOST:PORT[,HOST:PORT]/TOPIC` into the bootstrap list and the topic."""
    parts = urlsplit(value)
    assert parts.scheme == "kafka", f"--input should be a kafka:// address, found {value!r}"
    return parts.netloc.split(","), parts.path.lstrip("/")


def created_topics(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return {topic: {"partitions": N, "configs": {…}}} for each `kafka-topics --create`.

    The one-shot service runs a shell script. Compose turns `$$` into `$`, and the
    script's `$NAME` references are resolved from the service's environment.
    """
    command = service.get("command") or []
    script = "\n".join(command) if isinstance(command, list) else str(command)
    script = script.replace("$$", "$")
    variables = environment(service)

    topics = {}
    for line in script.splitlines():
        if "--create" not in line:
            continue
        tokens = [_expand(token, variables) for token in shlex.split(line, comments=True)]
        options = _options(tokens)
        topic = options["--topic"][0]
        topics[topic] = {
            "partitions": int(options.get("--partitions", ["0"])[0]),
            "configs": dict(item.split("=", 1) for item in options.get("--config", [])),
        }
    return topics


def _expand(token: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda match: variables.get(match.group(1), match.group(0)),
        token,
    )


def _options(tokens: list[str]) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag.startswith("--") and not value.startswith("--"):
            options.setdefault(flag, []).append(value)
    return options


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined."""
    instructions = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        logical = ""
    return instructions


def requirement_name(requirement: str) -> str:
    """Return the normalized project name of a PEP 508 requirement string."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert name, f"unreadable requirement {requirement!r} in pyproject.toml"
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


# --- images and services ---------------------------------------------------------------


def test_service_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image or "build" in service, f"service {name} has neither an image nor a build"
        if image is None or "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, (
            f"service {name}: image {image!r} has no tag; pin a version"
        )
        assert tag != "latest", f"service {name}: image {image!r} uses `latest`; pin a version"


@pytest.mark.parametrize(
    "name", [KAFKA, KAFKA_INIT, REDIS, "postgres", CLAMD, FLOW, "prometheus", "grafana"]
)
def test_cluster_service_exists(services, name):
    assert name in services, f"docker-compose.yml has no `{name}` service"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, target, _ in volume_mounts(service):
            if is_named_volume(source):
                assert source in declared, (
                    f"service {name} mounts volume {source!r} at {target}, "
                    "which the top-level `volumes:` does not declare"
                )


def test_bind_mounts_exist_in_repository(services):
    for name, service in services.items():
        for source, target, _ in volume_mounts(service):
            if source.startswith("./"):
                assert (REPO / source).exists(), (
                    f"service {name} mounts {source} at {target}, which is missing"
                )


@pytest.mark.parametrize(
    "name, probe",
    [
        (KAFKA, r"kafka-broker-api-versions|kafka-topics"),
        (REDIS, r"redis-cli\b.*\bping"),
        ("postgres", r"pg_isready"),
        (CLAMD, r"clamdcheck|PING"),
        (FLOW, r"/healthz"),
    ],
)
def test_service_has_health_check(services, name, probe):
    command = health_check_command(services[name])
    assert command, f"service {name} has no health check"
    assert re.search(probe, command), (
        f"service {name}'s health check {command!r} does not run {probe!r}"
    )


def test_init_waits_for_healthy_broker(services):
    condition = (services[KAFKA_INIT].get("depends_on") or {}).get(KAFKA, {}).get("condition")
    assert condition == "service_healthy", (
        f"{KAFKA_INIT} should wait for {KAFKA} with condition service_healthy, found {condition!r}"
    )


@pytest.mark.parametrize(
    "dependency, condition",
    [
        (KAFKA, "service_healthy"),
        (REDIS, "service_healthy"),
        (CLAMD, "service_healthy"),
        (KAFKA_INIT, "service_completed_successfully"),
    ],
)
def test_flow_waits_for_dependency(services, dependency, condition):
    depends_on = services[FLOW].get("depends_on") or {}
    assert isinstance(depends_on, dict), (
        "ticketflow's depends_on should use the long form with conditions"
    )
    found = (depends_on.get(dependency) or {}).get("condition")
    assert found == condition, (
        f"ticketflow should wait for {dependency} with {condition}, found {found!r}"
    )


# --- the flow's command and config -----------------------------------------------------


def test_flow_reads_kafka_internal_listener(services, flow_args):
    bootstrap, _ = kafka_input(flow_args.input)
    kafka_environment = environment(services[KAFKA])
    advertised = kafka_listeners(kafka_environment["KAFKA_ADVERTISED_LISTENERS"])
    bound = kafka_listeners(kafka_environment["KAFKA_LISTENERS"])
    internal = {
        f"{host}:{port}": name for name, (host, port) in advertised.items() if host == KAFKA
    }

    for address in bootstrap:
        assert address in internal, (
            f"--input names broker {address}, but the {KAFKA} service advertises "
            f"{sorted(internal) or 'no listener'} on the compose network"
        )
        listener = internal[address]
        assert listener in bound, f"listener {listener} is advertised but not in KAFKA_LISTENERS"
        assert bound[listener][1] == advertised[listener][1], (
            f"listener {listener} binds port {bound[listener][1]} "
            f"but advertises port {advertised[listener][1]}"
        )


def test_flow_topic_is_created_by_init(services, flow_args):
    _, topic = kafka_input(flow_args.input)
    topics = created_topics(services[KAFKA_INIT])
    assert topic in topics, (
        f"--input reads topic {topic!r}, but {KAFKA_INIT} creates only {sorted(topics)}"
    )


def test_flow_topic_has_partition_per_worker(services, flow_args):
    _, topic = kafka_input(flow_args.input)
    topics = created_topics(services[KAFKA_INIT])
    assert topic in topics, f"{KAFKA_INIT} does not create topic {topic}"
    partitions = topics[topic]["partitions"]
    workers = flow_args.processes * flow_args.workers
    assert partitions >= workers, (
        f"topic {topic} has {partitions} partitions for {workers} workers. Each partition is read "
        "by one worker, so the others would sit idle"
    )


def test_dead_letter_topic_is_created(services, flow_args):
    _, topic = kafka_input(flow_args.input)
    topics = created_topics(services[KAFKA_INIT])
    assert f"{topic}.dlq" in topics, (
        f"{KAFKA_INIT} does not create the dead-letter topic {topic}.dlq"
    )


def test_flow_runs_two_processes(flow_args):
    assert flow_args.processes == 2, (
        f"ticketflow should run --processes 2, found {flow_args.processes}"
    )


def test_flow_restarts_after_failure(services):
    policy = str(services[FLOW].get("restart", "no"))
    assert policy in ("always", "unless-stopped") or policy.startswith("on-failure"), (
        f"ticketflow's restart policy is {policy!r}; a cluster stops when one process dies, "
        "and a restart resumes it from the recovery snapshots"
    )


def test_flow_state_lives_on_volume(services, flow_args):
    assert flow_args.store.startswith("sqlite:///"), f"unexpected store URL {flow_args.store!r}"
    assert flow_args.recovery_dir is not None, (
        "ticketflow runs without --recovery-dir, so a restart starts over"
    )
    volume_targets = [
        target for source, target, _ in volume_mounts(services[FLOW]) if is_named_volume(source)
    ]
    for label, path in (
        ("store", flow_args.store.removeprefix("sqlite:///")),
        ("recovery dir", str(flow_args.recovery_dir)),
    ):
        assert PurePosixPath(path).is_absolute(), (
            f"the {label} {path} is relative to the image's work dir"
        )
        assert any(under(path, target) for target in volume_targets), (
            f"the {label} {path} is on no named volume of ticketflow, "
            "so it is lost with the container"
        )


def test_config_mounted_is_deploy_file(services, flow_args):
    mounts = {
        target: (source, read_only) for source, target, read_only in volume_mounts(services[FLOW])
    }
    config = str(flow_args.config)
    assert config in mounts, f"--config {config} is not a mount target of the ticketflow service"
    source, read_only = mounts[config]
    assert source == DEPLOY_CONFIG, (
        f"--config {config} is mounted from {source}, expected {DEPLOY_CONFIG}"
    )
    assert read_only, f"{DEPLOY_CONFIG} should be mounted read-only (`:ro`)"


def test_deploy_config_validates():
    settings = load_settings(REPO / DEPLOY_CONFIG)
    assert isinstance(settings, Settings)


def test_redis_url_names_redis_service(services, deploy_settings):
    host = urlsplit(deploy_settings.state.redis_url).hostname
    assert host == REDIS, (
        f"[state] redis_url {deploy_settings.state.redis_url!r} should name the {REDIS} service"
    )
    assert host in services, f"[state] redis_url names {host!r}, which is no compose service"


def clamd_size(value: str) -> int:
    """Return a clamd.conf size (`25M`, `512K` or bytes) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", value.strip())
    assert match, f"unreadable clamd.conf size {value!r}"
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return int(match.group(1)) * factor


def test_clamd_address_names_clamd_service(services, deploy_settings):
    address = parse_address(deploy_settings.attachments.clamd)
    assert address.host == CLAMD, (
        f"[attachments] clamd {deploy_settings.attachments.clamd!r} should name the {CLAMD} service"
    )
    assert address.port in container_ports(services[CLAMD]), (
        f"[attachments] clamd uses port {address.port}, "
        f"{CLAMD} exposes {container_ports(services[CLAMD])}"
    )


def test_clamd_not_published_on_host(services):
    assert not services[CLAMD].get("ports"), (
        f"{CLAMD} publishes {services[CLAMD]['ports']} on the host; only the flow needs it, "
        "so `expose` is enough"
    )


def test_clamd_database_lives_on_volume(services):
    targets = {
        target for source, target, _ in volume_mounts(services[CLAMD]) if is_named_volume(source)
    }
    assert "/var/lib/clamav" in targets, (
        f"{CLAMD} keeps its signatures in /var/lib/clamav, which is on no named volume, "
        "so every new container downloads them again"
    )


def test_clamd_accepts_largest_attachment(services, deploy_settings):
    limit = deploy_settings.attachments.max_file_bytes
    value = environment(services[CLAMD]).get("CLAMD_CONF_StreamMaxLength")
    assert value is not None, f"the {CLAMD} service does not set CLAMD_CONF_StreamMaxLength"
    assert clamd_size(value) >= limit, (
        f"clamd's StreamMaxLength {value} is below [attachments] max_file_bytes {limit}, "
        "so clamd would reject the largest allowed attachment"
    )


def test_attachment_store_lives_on_volume(services, deploy_settings):
    store = deploy_settings.attachments.store
    assert store, f"{DEPLOY_CONFIG} sets no [attachments] store"
    assert PurePosixPath(store).is_absolute(), f"the attachment store {store} is a relative path"
    volume_targets = [
        target for source, target, _ in volume_mounts(services[FLOW]) if is_named_volume(source)
    ]
    assert any(under(store, target) for target in volume_targets), (
        f"the attachment store {store} is on no named volume of ticketflow, "
        "so stored files are lost with the container"
    )


@pytest.mark.parametrize("setting", ["KAFKA_MESSAGE_MAX_BYTES", "KAFKA_REPLICA_FETCH_MAX_BYTES"])
def test_broker_accepts_largest_mail(services, deploy_settings, setting):
    limit = deploy_settings.limits.max_message_bytes
    value = environment(services[KAFKA]).get(setting)
    assert value is not None, f"the {KAFKA} service does not set {setting} (default about 1 MB)"
    assert int(value) >= limit, f"{setting} {value} is below [limits] max_message_bytes {limit}"


def test_topics_accept_largest_mail(services, deploy_settings):
    limit = deploy_settings.limits.max_message_bytes
    for topic, spec in created_topics(services[KAFKA_INIT]).items():
        value = spec["configs"].get("max.message.bytes")
        if value is None:
            continue
        assert int(value) >= limit, f"topic {topic} max.message.bytes {value} is below {limit}"


# --- secrets ---------------------------------------------------------------------------


def test_no_literal_secret_values(services):
    for name, service in services.items():
        for variable, value in environment(service).items():
            if not any(word in variable.upper() for word in SECRET_WORDS):
                continue
            reference = VARIABLE_REFERENCE.match(value)
            assert reference, (
                f"service {name}: {variable} holds a literal value; use ${{…}} from the environment"
            )
            if reference.group("op") in ("-", ":-"):
                assert not reference.group("arg"), (
                    f"service {name}: {variable} falls back to a literal default {value!r}"
                )


@pytest.mark.parametrize(
    "name, variable",
    [("postgres", "POSTGRES_PASSWORD"), ("grafana", "GF_SECURITY_ADMIN_PASSWORD")],
)
def test_password_required_from_environment(services, name, variable):
    value = environment(services[name]).get(variable, "")
    reference = VARIABLE_REFERENCE.match(value)
    assert reference, f"service {name}: {variable} should be a ${{…}} reference, found {value!r}"
    assert reference.group("op") == ":?", (
        f"service {name}: {variable} should fail when unset (${{NAME:?message}}), found {value!r}"
    )


def test_config_sasl_example_validates(tmp_path, services):
    """Uncommenting the [kafka] SASL example gives a valid config.

    Its password must come from a variable that compose passes to the flow.
    """
    lines = (REPO / DEPLOY_CONFIG).read_text(encoding="utf-8").splitlines()
    start = lines.index("[kafka]")
    example = [line.removeprefix("# ") for line in lines[start:] if line.startswith('# "')]
    assert example, f"the [kafka] table of {DEPLOY_CONFIG} has no commented example settings"
    config = tmp_path / "sasl.toml"
    config.write_text("\n".join(lines[:start] + ["[kafka]"] + example) + "\n", encoding="utf-8")

    kafka = load_settings(config).kafka
    variables = {value for key, value in kafka.settings if key.endswith("_env")}
    assert variables, "the SASL example names no *_env variable for its secret"
    passed_through = environment(services[FLOW])
    for variable in variables:
        assert variable in passed_through, (
            f"{variable} is named in the config but not passed to ticketflow"
        )
    resolved = kafka.client_settings({variable: "from-the-environment" for variable in variables})
    assert "from-the-environment" in resolved.values(), "the *_env setting did not resolve"


# --- metrics ---------------------------------------------------------------------------


def test_flow_health_check_uses_metrics_port(services):
    command = health_check_command(services[FLOW])
    match = re.search(r"https?://[^/'\"\s]+:(\d+)/healthz", command)
    assert match, f"ticketflow's health check {command!r} names no http://HOST:PORT/healthz"
    ports = container_ports(services[FLOW])
    assert int(match.group(1)) in ports, (
        f"the health check uses port {match.group(1)}, ticketflow exposes {ports}"
    )


def test_prometheus_mounts_deploy_config(services):
    mounts = {target: source for source, target, _ in volume_mounts(services["prometheus"])}
    found = mounts.get("/etc/prometheus/prometheus.yml")
    assert found == PROMETHEUS_CONFIG, (
        f"prometheus should mount {PROMETHEUS_CONFIG}, found {found!r}"
    )


def test_prometheus_scrapes_flow_metrics_port(services):
    config = yaml.safe_load((REPO / PROMETHEUS_CONFIG).read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config.get("scrape_configs") or []}
    assert FLOW in jobs, f"{PROMETHEUS_CONFIG} has no `{FLOW}` scrape job"
    targets = [
        target for group in jobs[FLOW].get("static_configs") or [] for target in group["targets"]
    ]
    ports = container_ports(services[FLOW])
    flow_targets = [target for target in targets if target.rsplit(":", 1)[0] == FLOW]
    assert flow_targets, f"the {FLOW} job scrapes {targets}, none of them the {FLOW} service"
    for target in flow_targets:
        assert int(target.rsplit(":", 1)[1]) in ports, (
            f"target {target}: ticketflow exposes only {ports}"
        )


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_promtool_accepts_prometheus_config():
    result = subprocess.run(
        ["promtool", "check", "config", str(REPO / PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def flow_metrics_ports(flow_args: argparse.Namespace, deploy_settings: Settings) -> list[int]:
    """Return the port each process of the flow service serves: the base port + its id."""
    base = flow_args.metrics_port if flow_args.metrics_port is not None else deploy_settings.metrics.port
    return [base + index for index in range(flow_args.processes)]


def test_flow_exposes_every_process_metrics_port(services, flow_args, deploy_settings):
    ports = container_ports(services[FLOW])
    for port in flow_metrics_ports(flow_args, deploy_settings):
        assert port in ports, f"process port {port} is not exposed; ticketflow exposes {ports}"


def test_prometheus_scrapes_every_process(flow_args, deploy_settings):
    config = yaml.safe_load((REPO / PROMETHEUS_CONFIG).read_text(encoding="utf-8"))
    job = next(job for job in config["scrape_configs"] if job["job_name"] == FLOW)
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    wanted = {f"{FLOW}:{port}" for port in flow_metrics_ports(flow_args, deploy_settings)}
    assert wanted <= targets, f"{PROMETHEUS_CONFIG} does not scrape {sorted(wanted - targets)}"


def test_flow_health_check_is_process_zero(services, flow_args, deploy_settings):
    command = health_check_command(services[FLOW])
    port = int(re.search(r":(\d+)/healthz", command).group(1))
    assert port == flow_metrics_ports(flow_args, deploy_settings)[0]


def test_flow_metrics_reachable_from_other_containers(deploy_settings):
    assert deploy_settings.metrics.host not in ("127.0.0.1", "localhost", "::1"), (
        f"{DEPLOY_CONFIG} binds the metrics server to {deploy_settings.metrics.host}, which the "
        "prometheus container cannot reach; set [metrics] host = \"0.0.0.0\" (compose publishes "
        "the ports on the host's 127.0.0.1 only)"
    )


def test_prometheus_loads_mounted_rules(services):
    config = yaml.safe_load((REPO / PROMETHEUS_CONFIG).read_text(encoding="utf-8"))
    mounts = {target: source for source, target, _ in volume_mounts(services["prometheus"])}
    rule_files = config.get("rule_files") or []
    assert rule_files, f"{PROMETHEUS_CONFIG} loads no rule file"
    for rule_file in rule_files:
        target = str(PurePosixPath("/etc/prometheus") / rule_file)
        assert target in mounts, f"prometheus loads {target}, which compose does not mount"
        assert (REPO / mounts[target]).is_file(), f"{mounts[target]} is missing"


def test_grafana_mounts_dashboards(services):
    mounts = {target: source for source, target, _ in volume_mounts(services["grafana"])}
    sources = set(mounts.values())
    assert "./deploy/grafana/dashboards" in sources, "grafana does not mount deploy/grafana/dashboards"
    assert list((REPO / "deploy" / "grafana" / "dashboards").glob("*.json")), "no dashboard JSON to mount"


def test_grafana_provisions_prometheus_datasource(services):
    mounts = {target: source for source, target, _ in volume_mounts(services["grafana"])}
    assert mounts.get("/etc/grafana/provisioning") == GRAFANA_PROVISIONING, (
        f"grafana should mount {GRAFANA_PROVISIONING} at /etc/grafana/provisioning"
    )
    datasources = []
    for path in sorted((REPO / GRAFANA_PROVISIONING / "datasources").glob("*.y*ml")):
        datasources += yaml.safe_load(path.read_text(encoding="utf-8")).get("datasources") or []
    prometheus = [source for source in datasources if source.get("type") == "prometheus"]
    assert prometheus, f"{GRAFANA_PROVISIONING}/datasources provisions no Prometheus datasource"

    url = urlsplit(prometheus[0]["url"])
    assert url.hostname in services, (
        f"the datasource URL {prometheus[0]['url']} names no compose service"
    )
    assert url.port in container_ports(services[url.hostname]), (
        f"the datasource URL uses port {url.port}, which {url.hostname} does not expose"
    )


# --- the image -------------------------------------------------------------------------


def test_dockerfile_base_is_pinned_python_311(dockerfile):
    images = [arguments.split()[0] for keyword, arguments in dockerfile if keyword == "FROM"]
    assert images, "the Dockerfile has no FROM"
    base = images[-1]
    assert base.startswith("python:3.11"), (
        f"the image is based on {base}; pyproject.toml requires Python 3.11"
    )
    assert not base.endswith(":latest"), f"the base image {base} is not pinned"


def test_dockerfile_copies_package_sources(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed = {"pyproject.toml", pyproject["project"]["readme"]} | folders
    copied = set()
    for keyword, arguments in dockerfile:
        if keyword == "COPY" and not arguments.startswith("--from"):
            sources = [part for part in shlex.split(arguments) if not part.startswith("--")][:-1]
            copied |= {source.rstrip("/") for source in sources}
    missing = needed - copied
    assert not missing, (
        f"the Dockerfile does not copy {sorted(missing)}, which `pip install .` needs"
    )


def test_dockerfile_installs_package(dockerfile):
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    assert any(re.search(r"pip install (\S+ )*\.(\[[\w,-]+\])?(\s|$)", run) for run in runs), (
        "no RUN line of the Dockerfile runs `pip install .`"
    )


def test_dockerfile_entrypoint_is_ticketflow(dockerfile):
    entrypoints = [arguments for keyword, arguments in dockerfile if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["ticketflow"], (
        f'ENTRYPOINT is {entrypoints[-1]}, expected ["ticketflow"]'
    )


def test_dockerfile_runs_as_non_root(dockerfile):
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users, "the Dockerfile never switches USER, so the flow runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1]}"


def test_image_installs_command_dependencies(dockerfile, flow_args):
    """Check that the image installs the Kafka and Redis clients the compose command needs."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runs = " ".join(arguments for keyword, arguments in dockerfile if keyword == "RUN")
    extras = re.search(r"pip install (?:\S+ )*\.\[([\w,-]+)\]", runs)
    requirements = list(pyproject["dependencies"])
    for extra in extras.group(1).split(",") if extras else []:
        requirements += pyproject.get("optional-dependencies", {}).get(extra, [])
    installed = {requirement_name(requirement) for requirement in requirements}

    needed = {"confluent-kafka"} if flow_args.input.startswith("kafka://") else set()
    if flow_args.processes > 1:
        needed.add("redis")
    for name in sorted(needed):
        assert name in installed, (
            f"the compose command needs {name}, which `pip install` in the Dockerfile does not "
            "install. Add it to pyproject.toml's dependencies, or to an extra that the "
            "Dockerfile installs"
        )


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_copied_sources(dockerfile):
    patterns = dockerignore_patterns()
    for keyword, arguments in dockerfile:
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        for source in [part for part in shlex.split(arguments) if not part.startswith("--")][:-1]:
            source = source.rstrip("/")
            ignored = [pattern for pattern in patterns if fnmatch.fnmatch(source, pattern)]
            assert not ignored, (
                f".dockerignore pattern(s) {ignored} exclude {source}, which the Dockerfile copies"
            )


@pytest.mark.parametrize("local", [".git", ".venv", ".env"])
def test_dockerignore_excludes_local_state(local):
    assert local in dockerignore_patterns(), f".dockerignore should exclude {local}"
