import pytest

from ticketflow.config import ConfigError, Settings, load_settings, settings_as_dict, settings_from_mapping


def test_no_file_gives_defaults():
    assert load_settings(None) == Settings()


def test_values_are_read(tmp_path):
    path = tmp_path / "ticketflow.toml"
    path.write_text(
        '[routing]\ninbound_domains = ["help.example.org"]\ndefault_tenant = "misc"\n'
        '[gate]\nspam_threshold = 8\nbulk_policy = "open"\n'
    )
    settings = load_settings(path)
    assert settings.routing.inbound_domains == ("help.example.org",)
    assert settings.routing.default_tenant == "misc"
    assert settings.gate.spam_threshold == 8.0
    assert settings.gate.bulk_policy == "open"


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown key 'routing.inbound_domain' .*did you mean 'inbound_domains'\?"):
        settings_from_mapping({"routing": {"inbound_domain": ["x"]}})


def test_unknown_table_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'nonsense'.*known keys here: attachments, dedupe, gate"):
        settings_from_mapping({"nonsense": {}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"routing": {"inbound_domains": "support.example.com"}}, r"'routing.inbound_domains'.*expected a list of strings"),
        ({"gate": {"spam_threshold": "high"}}, r"'gate.spam_threshold'.*expected a number"),
        ({"gate": {"spam_threshold": True}}, r"'gate.spam_threshold'.*expected a number"),
        ({"gate": {"bulk_policy": "drop"}}, r"'gate.bulk_policy'.*use one of 'review', 'open', 'suppress'"),
        ({"limits": {"max_message_bytes": 1.5}}, r"'limits.max_message_bytes'.*expected an integer"),
        ({"limits": {"max_message_bytes": 0}}, r"'limits.max_message_bytes'.*positive integer"),
        ({"dedupe": {"window": -1}}, r"'dedupe.window'.*negative"),
        ({"gate": {"auto_reply_limit": -1}}, r"'gate.auto_reply_limit'.*negative"),
        ({"threading": {"key_pattern": "[A-Z"}}, r"'threading.key_pattern'.*regular expression"),
        ({"threading": {"key_pattern": "[A-Z]+-[0-9]+"}}, r"'threading.key_pattern'.*exactly one group"),
        ({"routing": {"default_tenant": " "}}, r"'routing.default_tenant'.*empty"),
        ({"routing": "x"}, r"'routing' in config must be a table"),
        ({"routing": {"default_tenant": 3}}, r"'routing.default_tenant'.*expected a string"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(data)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[routing\n")
    with pytest.raises(ConfigError, match="invalid TOML in .*broken.toml"):
        load_settings(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_effective_values_are_plain_data():
    values = settings_as_dict(Settings())
    assert values["routing"]["inbound_domains"] == ["support.example.com"]
    assert values["limits"]["max_message_bytes"] == 25 * 1024 * 1024


def test_kafka_settings_pass_through_by_their_own_names():
    settings = settings_from_mapping({"kafka": {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                                                "enable.idempotence": True}})
    assert settings.kafka.client_settings({}) == {
        "enable.idempotence": "true", "sasl.mechanisms": "PLAIN", "security.protocol": "SASL_SSL"}


def test_kafka_secret_comes_from_environment():
    settings = settings_from_mapping({"kafka": {"sasl.password_env": "TICKETFLOW_KAFKA_PASSWORD"}})
    assert settings.kafka.client_settings({"TICKETFLOW_KAFKA_PASSWORD": "s3cret"}) == {"sasl.password": "s3cret"}
    with pytest.raises(ConfigError, match="TICKETFLOW_KAFKA_PASSWORD, which is not set"):
        settings.kafka.client_settings({})


def test_kafka_secret_in_file_is_rejected():
    with pytest.raises(ConfigError, match=r"'kafka.sasl.password' .*looks like a secret.*sasl.password_env"):
        settings_from_mapping({"kafka": {"sasl.password": "hunter2"}})


def test_kafka_env_must_name_ticketflow_variable():
    with pytest.raises(ConfigError, match="name a TICKETFLOW_"):
        settings_from_mapping({"kafka": {"sasl.password_env": "HOME"}})


def test_redis_url_scheme_checked():
    with pytest.raises(ConfigError, match=r"'state.redis_url'.*use redis://HOST:PORT/DB"):
        settings_from_mapping({"state": {"redis_url": "localhost:6379"}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20])
def test_durations_must_be_finite_and_bounded(value):
    with pytest.raises(ConfigError, match="'threading.orphan_wait'"):
        settings_from_mapping({"threading": {"orphan_wait": value}})


def test_redis_password_must_not_live_in_file():
    with pytest.raises(ConfigError, match=r"'state.redis_url' .*contains a password.*redis_url_env") as raised:
        settings_from_mapping({"state": {"redis_url": "redis://user:hunter2@127.0.0.1:6379/0"}})
    assert "hunter2" not in str(raised.value)


def test_redis_url_from_environment():
    from ticketflow.config import state_redis_url

    settings = settings_from_mapping({"state": {"redis_url_env": "TICKETFLOW_REDIS_URL"}})
    assert state_redis_url(settings.state, {"TICKETFLOW_REDIS_URL": "redis://:pw@h:1/0"}) == "redis://:pw@h:1/0"
    with pytest.raises(ConfigError, match="TICKETFLOW_REDIS_URL, which is not set"):
        state_redis_url(settings.state, {})


def test_jaas_config_counts_as_secret():
    with pytest.raises(ConfigError, match="looks like a secret"):
        settings_from_mapping({"kafka": {"sasl.jaas.config": "x password=y"}})


def test_metrics_and_logging_defaults():
    settings = Settings()
    assert (settings.metrics.port, settings.metrics.host) == (9464, "127.0.0.1")
    assert (settings.logging.format, settings.logging.level) == ("text", "warning")
    assert settings.logging.mask == ("addresses", "tokens", "cards", "urls")


def test_metrics_and_logging_are_read(tmp_path):
    path = tmp_path / "ticketflow.toml"
    path.write_text('[metrics]\nport = 0\nhost = "0.0.0.0"\n'
                    '[logging]\nformat = "json"\nlevel = "info"\nmask = ["tokens"]\n')
    settings = load_settings(path)
    assert (settings.metrics.port, settings.metrics.host) == (0, "0.0.0.0")
    assert (settings.logging.format, settings.logging.level, settings.logging.mask) == ("json", "info", ("tokens",))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"metrics": {"port": 70000}}, r"'metrics.port'.*70000; use a port from 1 to 65535, or 0"),
        ({"metrics": {"port": -1}}, r"'metrics.port'.*-1; use a port"),
        ({"metrics": {"port": "9464"}}, r"'metrics.port'.*expected an integer"),
        ({"metrics": {"host": " "}}, r"'metrics.host'.*empty; use 127.0.0.1"),
        ({"metrics": {"prot": 1}}, r"unknown key 'metrics.prot'.*did you mean 'port'\?"),
        ({"logging": {"format": "yaml"}}, r"'logging.format'.*use one of 'text', 'json'"),
        ({"logging": {"level": "verbose"}}, r"'logging.level'.*use one of 'debug', 'info'"),
        ({"logging": {"mask": ["emails"]}}, r"'logging.mask'.*'emails'; use a list of 'addresses'"),
        ({"logging": {"mask": "addresses"}}, r"'logging.mask'.*expected a list of strings"),
    ],
)
def test_bad_metrics_and_logging_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(data)


# -- [sink] and [attachments] -----------------------------------------------------


def test_sink_kind_needs_the_url_of_its_system():
    with pytest.raises(ConfigError, match=r"'sink.zendesk.url' .*kind is 'zendesk'.*https://acme.zendesk.com"):
        settings_from_mapping({"sink": {"kind": "zendesk"}})


def test_unknown_sink_kind_lists_the_kinds():
    with pytest.raises(ConfigError, match=r"'sink.kind'.*'jirra'.*'none', 'jira', 'zendesk', 'servicenow', 'webhook'"):
        settings_from_mapping({"sink": {"kind": "jirra"}})


def test_sink_secret_variable_must_be_a_ticketflow_one():
    with pytest.raises(ConfigError, match=r"'sink.jira.token_env'.*'JIRA_TOKEN'.*TICKETFLOW_"):
        settings_from_mapping({"sink": {"jira": {"token_env": "JIRA_TOKEN"}}})


def test_mapping_rules_list_of_tables():
    settings = settings_from_mapping({"sink": {
        "kind": "jira", "jira": {"url": "https://jira.example.com"},
        "rules": [{"when": {"tenant": ["acme"], "priority": ["P0", "P1"]}, "project": "PAY"}],
    }})
    rule = settings.sink.rules[0]
    assert (rule.when.tenant, rule.when.priority, rule.project) == (("acme",), ("P0", "P1"), "PAY")


def test_mapping_rule_typo_names_the_rule_and_key():
    with pytest.raises(ConfigError, match=r"unknown key 'sink.rules\[1\].projct'.*did you mean 'project'"):
        settings_from_mapping({"sink": {"rules": [{}, {"projct": "PAY"}]}})


def test_mapping_rule_field_of_another_system_is_refused():
    with pytest.raises(ConfigError, match=r"'sink.rules\[0\].assignment_group' .*servicenow only.*'jira'"):
        settings_from_mapping({"sink": {"kind": "jira", "jira": {"url": "https://j.example"},
                                        "rules": [{"assignment_group": "L2"}]}})


def test_rule_unknown_priority_rejected():
    with pytest.raises(ConfigError, match=r"'sink.rules\[0\].when.priority'.*'P7'.*P0 to P4"):
        settings_from_mapping({"sink": {"rules": [{"when": {"priority": ["P7"]}}]}})


def test_rules_must_be_tables():
    with pytest.raises(ConfigError, match=r"'sink.rules'.*list of tables"):
        settings_from_mapping({"sink": {"rules": {"project": "PAY"}}})


def test_attachment_types_must_be_media_types():
    with pytest.raises(ConfigError, match=r"'attachments.deny_types'.*'exe'.*image/\*"):
        settings_from_mapping({"attachments": {"deny_types": ["exe"]}})


def test_clamd_address_has_one_of_two_forms():
    with pytest.raises(ConfigError, match=r"'attachments.clamd'.*'clamd:3310'.*tcp://HOST:PORT"):
        settings_from_mapping({"attachments": {"clamd": "clamd:3310"}})
    for address in ("unix:///run/clamav/clamd.ctl", "tcp://[::1]:3310", "tcp://clamd:3310"):
        assert settings_from_mapping({"attachments": {"clamd": address}}).attachments.clamd == address


def test_sink_numbers_must_be_positive():
    with pytest.raises(ConfigError, match=r"'sink.max_backlog'.*0.*positive"):
        settings_from_mapping({"sink": {"max_backlog": 0}})


def test_rule_tenants_are_lower_case():
    with pytest.raises(ConfigError, match=r"'sink.rules\[0\].when.tenant'.*'ACME'.*write 'acme'"):
        settings_from_mapping({"sink": {"rules": [{"when": {"tenant": ["ACME"]}}]}})


def test_jira_labels_have_no_spaces():
    with pytest.raises(ConfigError, match=r"'sink.rules\[0\].labels'.*'needs triage'.*'needs-triage'"):
        settings_from_mapping({"sink": {"kind": "jira", "jira": {"url": "https://j.example"},
                                        "rules": [{"labels": ["needs triage"]}]}})


def test_check_config_reports_missing_secrets(tmp_path, capsys, monkeypatch):
    from ticketflow.cli import main

    config = tmp_path / "sink.toml"
    config.write_text('[sink]\nkind = "zendesk"\n[sink.zendesk]\nurl = "https://acme.zendesk.com"\n'
                      '[kafka]\n"sasl.password_env" = "TICKETFLOW_KAFKA_PASSWORD"\n')
    monkeypatch.delenv("TICKETFLOW_ZENDESK_TOKEN", raising=False)
    monkeypatch.setenv("TICKETFLOW_KAFKA_PASSWORD", "set")

    assert main(["check-config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert "'sink.zendesk.token_env' names the environment variable TICKETFLOW_ZENDESK_TOKEN" in errors
    assert "KAFKA" not in errors

    monkeypatch.setenv("TICKETFLOW_ZENDESK_TOKEN", "token")
    assert main(["check-config", str(config)]) == 0
