"""A password that must never appear anywhere: a real connector whose DSN and storefront URL carry it — written
in the DSN, as a URL password, through ${VAR} and through ${file:} — fails in a few ways (a wrong port, a wrong
password, a missing table) and succeeds once, and the password is in none of: its log (stdout and stderr),
`cdc status` and `--json`, `cdc validate`, the /metrics text, repr/str of the config objects, the exceptions
(message, repr, traceback with causes)."""

from __future__ import annotations

import os
import time
import traceback
import urllib.request

import pytest

from cdc.config import load_config
from cdc.localpg import free_port
from tests.integration.helpers import Running, wait_until
from tests.integration.support import CdcProcess
from tests.integration.support import run_cdc as cdc
from tests.integration.tls_support import PASSWORD, ROLE, fresh_name, secure_cluster

WRONG = "Kp3-wrong-ALSO-hidden-8w"  # a wrong password is as secret as the right one
FORBIDDEN = (PASSWORD, WRONG)

CONFIG = """
name: {name}
source: {{type: postgres, dsn: "{dsn}", tables: [{table}]}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "{url}", table: product_price, key: [sku]}}
"""


@pytest.fixture(scope="module")
def secure_pg(tmp_path_factory):
    with secure_cluster(tmp_path_factory.mktemp("secure-pg")) as cluster:
        yield cluster


def forms(sp, pos: str, store: str, tmp_path, password: str, port: int) -> dict[str, tuple[str, str, dict]]:
    """(dsn, url, environment) of each way to give the password."""
    secret = "wrong_password" if password == WRONG else "pos_password"
    (tmp_path / secret).write_text(password + "\n")
    tls = f"sslmode=verify-full&sslrootcert={sp.ca}"
    return {
        "in the DSN": (
            sp.dsn(pos, password=password).replace(f"port={sp.port}", f"port={port}"),
            sp.url(store, password=password),
            {},
        ),
        "as a URL password": (
            f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{pos}?{tls}",
            sp.url(store, password=password).replace(f":{sp.port}/", f":{port}/"),
            {},
        ),
        "through ${VAR}": (
            sp.dsn(pos, password="${POS_PASSWORD}").replace(f"port={sp.port}", f"port={port}"),
            sp.url(store, password="${POS_PASSWORD}"),
            {"POS_PASSWORD": password},
        ),
        "through ${file:}": (
            sp.dsn(pos, password=f"${{file:{secret}}}").replace(f"port={sp.port}", f"port={port}"),
            sp.url(store, password=f"${{file:{secret}}}"),
            {},
        ),
    }


FAULTS = ["wrong port", "wrong password", "missing table"]


def exception_texts(err: BaseException) -> str:
    return "\n".join([str(err), repr(err), *traceback.format_exception(err)])


def leaks(outputs: dict[str, str]) -> dict[str, str]:
    return {where: text for where, text in outputs.items() if any(s in text for s in FORBIDDEN)}


@pytest.mark.parametrize("form", ["in the DSN", "as a URL password", "through ${VAR}", "through ${file:}"])
def test_the_password_appears_nowhere(secure_pg, tmp_path, form, monkeypatch, caplog):
    sp = secure_pg
    name = fresh_name()
    pos, store = sp.databases(name)
    sp.run(pos, "INSERT INTO item_price VALUES ('A', 100)")
    outputs: dict[str, str] = {}

    def write(fname: str, password: str = PASSWORD, port: int = sp.port, table: str = "public.item_price"):
        dsn, url, env = forms(sp, pos, store, tmp_path, password, port)[form]
        path = tmp_path / fname
        path.write_text(CONFIG.format(name=name, dsn=dsn, url=url, table=table))
        return path, env

    # three failures, each a real `cdc run` and the same config run in-process (its exception)
    faults = {
        "wrong port": write("port.yaml", port=free_port()),
        "wrong password": write("password.yaml", password=WRONG),
        "missing table": write("table.yaml", table="public.no_such_table"),
    }
    for fault, (path, env) in faults.items():
        res = cdc("run", path, "--retry-for", "2", env=env)
        assert res.returncode == 1, f"{fault}: {res.stdout}{res.stderr}"
        assert res.stderr.strip().splitlines()[-1].startswith("error: "), res.stderr
        outputs[f"{fault}: cdc run stdout+stderr"] = res.stdout + res.stderr
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        running = Running(path, retry_for_s=2)
        with running:
            wait_until(lambda r=running: not r.thread.is_alive(), 60, f"{fault} to stop the pipeline")
            with pytest.raises(Exception) as caught:
                running.check()
            running.error = None
        outputs[f"{fault}: exception"] = exception_texts(caught.value)
        outputs[f"{fault}: cdc validate"] = (lambda r: r.stdout + r.stderr)(cdc("validate", path, env=env))
        outputs[f"{fault}: cdc validate --check-source"] = (lambda r: r.stdout + r.stderr)(
            cdc("validate", "--check-source", path, env=env)
        )

    # and once it works: a run with metrics, status and validate beside it
    path, env = write("good.yaml")
    cfg = load_config(path) if not env else None
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = cfg or load_config(path)
    outputs.update(
        {
            "repr(config)": repr(cfg),
            "str(config)": str(cfg),
            "repr(source), str(sink)": repr(cfg.source) + str(cfg.sink),
        }
    )
    port = free_port()
    os.environ.update(env)
    try:
        proc = CdcProcess(path, tmp_path / "run.log", "--metrics-port", str(port))
    finally:
        for k in env:
            os.environ.pop(k)
    try:
        stored = lambda: dict(sp.run(store, "SELECT sku, price::text FROM product_price"))  # noqa: E731
        wait_until(lambda: stored() == {"A": "1.00"}, 60, "the snapshot")
        sp.run(pos, "UPDATE item_price SET price_fen = 150 WHERE item_code = 'A'")
        wait_until(lambda: stored() == {"A": "1.50"}, 60, "a streamed change")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            outputs["/metrics"] = metrics = r.read().decode()
        assert f'cdc_connector_up{{connector="{name}"}} 1.0' in metrics
        status = cdc("status", path, env=env)
        status_json = cdc("status", path, "--json", env=env)
        assert status.returncode == 0 and status_json.returncode == 0, status.stderr + status_json.stderr
        assert f'"connector": "{name}"' in status_json.stdout
        outputs["cdc status"] = status.stdout + status.stderr
        outputs["cdc status --json"] = status_json.stdout + status_json.stderr
        validate = cdc("validate", path, env=env)
        assert validate.returncode == 0, validate.stderr
        outputs["cdc validate"] = validate.stdout + validate.stderr
        checked = cdc("validate", "--check-source", path, env=env)
        outputs["cdc validate --check-source"] = checked.stdout + checked.stderr
        proc.assert_alive()
    finally:
        rc, _ = proc.terminate(30)
    time.sleep(0.1)
    outputs["cdc run log"] = proc.log_path.read_text()
    assert rc == 0, proc.tail()
    outputs["in-process log records (no redacting filter)"] = caplog.text
    assert len(outputs) == 22
    assert not leaks(outputs), "the password appears in: " + "; ".join(
        f"{where}: ...{text[max(0, text.find(PASSWORD) - 200) :][:400]}..."
        for where, text in leaks(outputs).items()
    )
