"""The example connectors a DBA copies are valid, and `cdc demo` (the README's first command) plays its scenes:
a promotion that starts and ends, and a fat-fingered price that is quarantined."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.support import ROOT

EXAMPLES = sorted((ROOT / "connectors").glob("*.yaml"))


def cdc(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "POS_DSN": "host=pos.internal dbname=pos",
        "STORE_URL": "sqlite:///shop.db",
        "KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
    }
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def test_every_example_connector_is_valid():
    names = {p.name for p in EXAMPLES}
    assert {
        "pos-to-storefront.yaml",
        "per-store-online.yaml",
        "promotions.yaml",
        "fat-finger-guard.yaml",
        "pos-to-kafka.yaml",
        "kafka-to-storefront.yaml",
    } <= names
    for path in EXAMPLES:
        out = cdc("validate", path)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
        assert out.stdout.startswith(f"{path}: ok")
    out = cdc("validate", *EXAMPLES)  # and together: their names do not clash
    assert out.returncode == 0, out.stderr


def test_demo_plays_a_promotion_and_a_quarantine():
    out = cdc("demo", "--seconds", "8", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "promotion on SKU-00001 starts" in text and "promotion on SKU-00001 ends" in text, text
    assert "quarantined SKU-00002" in text, text
    assert text.index("starts") < text.index("ends")
    assert "demo finished" in text


def test_demo_over_kafka_plays_the_same_scenes():
    """`cdc demo --kafka`: the same prices through the two connectors of a Kafka hop and a local broker."""
    out = cdc("demo", "--seconds", "8", "--kafka", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "Kafka at 127.0.0.1:" in text
    assert "quarantined SKU-00002" in text, text
    assert "promotion on SKU-00001 starts" in text and "promotion on SKU-00001 ends" in text, text
    assert "demo finished" in text
