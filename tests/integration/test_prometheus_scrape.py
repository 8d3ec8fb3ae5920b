"""A real scrape: Debian's prometheus binary on loopback scrapes a running connector, and the lag gauge is read
back through Prometheus' HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from cdc.localpg import free_port
from cdc.metrics import Metrics
from tests.integration.helpers import Running, wait_until
from tests.integration.test_observability import CONFIG, setup_tables


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; scripts/setup.sh --with-test-tools installs it")
        pytest.skip("prometheus not installed (run scripts/setup.sh --with-test-tools)")
    return path


def query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_end_to_end_lag(env, tmp_path):
    binary = prometheus_binary()
    setup_tables(env)
    metrics = Metrics()
    mport, pport = free_port(), free_port()
    server = metrics.serve(mport)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: pos-cdc\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n"
    )
    data = tmp_path / "tsdb"
    data.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(data, 0o777)
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{pport}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115 - closed with the process
    )
    try:
        with Running(env.write_config(CONFIG), metrics=metrics) as r:
            wait_until(lambda: env.store("SELECT count(*) FROM product_price")[0][0] == 1, running=r)
            env.pos("UPDATE item_price SET price_fen = 150")

            def scraped():
                try:
                    return query(pport, f'cdc_end_to_end_lag_seconds{{connector="{r.cfg.name}"}}')
                except OSError:
                    return None

            result = wait_until(scraped, timeout=60, what="prometheus to scrape the lag gauge", running=r)
            value = float(result[0]["value"][1])
            assert 0 <= value < 60
            up = wait_until(lambda: query(pport, f'cdc_connector_up{{connector="{r.cfg.name}"}}'), timeout=30)
            assert up[0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(10)
        server.shutdown()
