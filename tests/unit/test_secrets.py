"""Secrets in connector configs: `${file:...}`, masking in reprs, errors and logs (cdc/secrets.py,
cdc/config_vars.py), and the Kafka security settings (cdc/kafka_security.py)."""

from __future__ import annotations

import logging
import textwrap

import pytest

from cdc.config import load_config
from cdc.errors import ConfigError
from cdc.secrets import RedactingFilter, dsn_passwords, hide_password, read_secret_file, redact, remember

PW = "Tr0ub4dor-unit-7Qx"

CONFIG = """\
name: secrets
source:
  type: postgres
  dsn: "host=127.0.0.1 user=cdc password=${{file:{pos}}} dbname=pos"
  tables: [public.item_price]
sink:
  type: sql
  url: "postgresql+psycopg://store:${{file:{store}}}@127.0.0.1/store"
  table: product_price
  key: [sku]
"""


def write(tmp_path, body: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_file_secret_is_read_and_its_trailing_newline_dropped(tmp_path):
    (tmp_path / "pos_pw").write_text(PW + "\n")
    secrets = tmp_path / "run"
    secrets.mkdir()
    (secrets / "store_pw").write_text("store-" + PW + "\r\n")
    cfg = load_config(write(tmp_path, CONFIG.format(pos="pos_pw", store=secrets / "store_pw")))
    assert cfg.source.dsn == f"host=127.0.0.1 user=cdc password={PW} dbname=pos"
    assert cfg.sink.url == f"postgresql+psycopg://store:store-{PW}@127.0.0.1/store"


def test_a_missing_or_empty_secret_file_is_a_config_error_naming_file_and_line(tmp_path):
    (tmp_path / "empty").write_text("\n")
    path = write(tmp_path, CONFIG.format(pos="/nonexistent/pos_pw", store="empty"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems == [
        f"{path}:4: source.dsn: cannot read secret file /nonexistent/pos_pw: No such file or directory "
        "(create it, or give pos-cdc's user read access to it)",
        f"{path}:8: sink.url: secret file {tmp_path / 'empty'} is empty (put the secret in it)",
    ]


def test_an_unreadable_secret_file_says_so(tmp_path):
    (tmp_path / "pos_pw").write_text(PW)
    (tmp_path / "store_pw").mkdir()  # reading a directory fails as an unreadable file does
    path = write(tmp_path, CONFIG.format(pos="pos_pw", store="store_pw"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (problem,) = e.value.problems
    assert problem.startswith(f"{path}:8: sink.url: cannot read secret file {tmp_path / 'store_pw'}: ")
    assert PW not in str(e.value)


def test_a_secret_of_digits_stays_text(tmp_path):
    (tmp_path / "pw").write_text("123456\n")
    path = write(
        tmp_path,
        """\
        name: k
        source: {type: postgres, dsn: "host=h", tables: [public.t]}
        sink:
          type: kafka
          bootstrap_servers: 127.0.0.1:9093
          topic_prefix: pos
          security_protocol: SASL_SSL
          sasl_mechanism: SCRAM-SHA-512
          sasl_username: cdc
          sasl_password: ${file:pw}
        """,
    )
    cfg = load_config(path)
    assert cfg.sink.sasl_password.get_secret_value() == "123456"


def test_no_secret_in_repr_or_str_of_the_config(tmp_path):
    (tmp_path / "pos_pw").write_text(PW)
    (tmp_path / "store_pw").write_text("s-" + PW)
    cfg = load_config(write(tmp_path, CONFIG.format(pos="pos_pw", store="store_pw")))
    for text in (repr(cfg), str(cfg), repr(cfg.source), str(cfg.sink)):
        assert PW not in text
    assert "password=***" in repr(cfg.source)
    assert "store:***@127.0.0.1" in repr(cfg.sink)


def test_kafka_password_and_password_options_are_masked(tmp_path):
    path = write(
        tmp_path,
        f"""\
        name: k
        source: {{type: postgres, dsn: "host=h", tables: [public.t]}}
        sink:
          type: kafka
          client: confluent-kafka
          bootstrap_servers: 127.0.0.1:9093
          topic_prefix: pos
          security_protocol: SASL_SSL
          ssl_cafile: /etc/ca.pem
          sasl_mechanism: SCRAM-SHA-512
          sasl_username: cdc
          sasl_password: "{PW}"
          options: {{ssl.key.password: "key-{PW}"}}
        """,
    )
    cfg = load_config(path)
    assert PW not in repr(cfg) and PW not in str(cfg.sink)
    assert cfg.sink.client_options() == {
        "ssl.key.password": f"key-{PW}",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/ca.pem",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "cdc",
        "sasl.password": PW,
    }
    assert redact(f"x {PW} y key-{PW}") == "x *** y ***"


KAFKA = """\
name: k
source: {{type: postgres, dsn: "host=h", tables: [public.t]}}
sink: {{type: kafka, bootstrap_servers: "127.0.0.1:9093", topic_prefix: pos, {extra}}}
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        ("sasl_username: u", "sasl_username need security_protocol: SASL_SSL (or SASL_PLAINTEXT)"),
        (
            "security_protocol: SASL_SSL, sasl_username: u",
            "security_protocol SASL_SSL needs sasl_mechanism, sasl_password",
        ),
        (
            "security_protocol: PLAINTEXT, ssl_cafile: ca.pem",
            "ssl_cafile need security_protocol: SSL or SASL_SSL",
        ),
        ("security_protocol: SSL, ssl_certfile: c.pem", "give ssl_certfile and ssl_keyfile together"),
        (
            "security_protocol: SSL, options: {ssl_cafile: ca.pem}",
            "options: ssl_cafile is set by pos-cdc from security_protocol, ssl_* and sasl_*",
        ),
        ("security_protocol: TLS", "Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
    ],
)
def test_kafka_security_settings_that_do_not_fit_are_refused(tmp_path, extra, message):
    path = write(tmp_path, KAFKA.format(extra=extra))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (problem,) = e.value.problems
    assert problem.startswith(f"{path}:3: sink")
    assert message in problem


def test_kafka_python_names(tmp_path):
    path = write(
        tmp_path,
        KAFKA.format(
            extra="security_protocol: SASL_SSL, ssl_cafile: ca.pem, sasl_mechanism: SCRAM-SHA-256, "
            "sasl_username: u, sasl_password: pw-x"
        ),
    )
    assert load_config(path).sink.client_options() == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "ca.pem",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u",
        "sasl_plain_password": "pw-x",
    }


@pytest.mark.parametrize(
    "dsn, shown, passwords",
    [
        ("host=h password=abc123 user=u", "host=h password=*** user=u", {"abc123"}),
        ("host=h password = 'a b\\'c' user=u", "host=h password = *** user=u", {"'a b\\'c'", "a b'c"}),
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db", {"p%40ss", "p@ss"}),
        ("mysql+pymysql://u:pw1@h/db", "mysql+pymysql://u:***@h/db", {"pw1"}),
        ("postgresql://u@h/db", "postgresql://u@h/db", set()),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db", set()),
    ],
)
def test_dsn_passwords_hidden(dsn, shown, passwords):
    assert hide_password(dsn) == shown
    assert dsn_passwords(dsn) == passwords


def test_secret_file_reading(tmp_path):
    f = tmp_path / "s"
    f.write_text("a\n\n")
    assert read_secret_file(f) == "a\n"  # only the one trailing newline `echo` adds
    f.write_text("")
    with pytest.raises(ValueError):
        read_secret_file(f)


def test_log_records_are_redacted(caplog):
    remember("log-" + PW)
    logger = logging.getLogger("cdc.test_secrets")
    handler = caplog.handler
    handler.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="cdc.test_secrets"):
            logger.info("connecting with %s", f"host=h password=log-{PW}")
            try:
                raise RuntimeError(f"failed: log-{PW}")
            except RuntimeError:
                logger.exception("it failed")
    finally:
        handler.removeFilter(handler.filters[-1])
    assert PW not in caplog.text
    assert "connecting with host=h password=***" in caplog.text
    assert "RuntimeError: failed: ***" in caplog.text


def test_a_secret_file_path_may_name_a_directory_by_variable(tmp_path, monkeypatch):
    """systemd's LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY."""
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "pos_pw").write_text(PW + "\n")
    (tmp_path / "creds" / "store_pw").write_text("s" + PW)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    cfg = load_config(
        write(
            tmp_path,
            CONFIG.format(pos="${CREDENTIALS_DIRECTORY}/pos_pw", store="${CREDENTIALS_DIRECTORY}/store_pw"),
        )
    )
    assert f"password={PW} " in cfg.source.dsn and f":s{PW}@" in cfg.sink.url
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as e:
        load_config(
            write(tmp_path, CONFIG.format(pos="${CREDENTIALS_DIRECTORY}/pos_pw", store="creds/store_pw"))
        )
    (problem,) = e.value.problems
    assert problem.startswith(
        f"{tmp_path / 'c.yaml'}:4: source.dsn: environment variable CREDENTIALS_DIRECTORY is not set"
    )


def test_kafka_pythons_debug_log_of_its_configuration_is_redacted(tmp_path, caplog):
    """kafka-python logs every setting, the SASL password with them, at DEBUG (`cdc --debug`): the password a
    loaded config holds is masked there by the filter `cdc` puts on its log handlers."""
    from kafka import KafkaAdminClient

    (tmp_path / "kafka_pw").write_text("kafka-" + PW + "\n")
    path = write(
        tmp_path,
        KAFKA.format(
            extra="security_protocol: SASL_PLAINTEXT, sasl_mechanism: SCRAM-SHA-512, sasl_username: u, "
            "sasl_password: '${file:kafka_pw}'"
        ),
    )
    options = load_config(path).sink.client_options()
    caplog.handler.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(Exception):  # noqa: B017 - no broker
            KafkaAdminClient(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=300, **options)
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "'sasl_plain_password': '***'" in caplog.text
    assert PW not in caplog.text


def test_admin_calls_of_a_confluent_connector_take_its_security_settings(tmp_path):
    from cdc.kafka_admin import admin_options

    path = write(
        tmp_path,
        KAFKA.format(
            extra="client: confluent-kafka, security_protocol: SASL_SSL, ssl_cafile: ca.pem, "
            "sasl_mechanism: SCRAM-SHA-512, sasl_username: u, sasl_password: pw-x, "
            "options: {ssl.endpoint.identification.algorithm: none}"
        ),
    )
    sink = load_config(path).sink
    assert admin_options(sink.client, sink.client_options()) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "ca.pem",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "pw-x",
        "ssl_check_hostname": False,
    }
