"""All metrics of one process, on their own registry, with the names in docs/reference.md (Metrics)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        c = ["connector"]
        self.source_lag_bytes = Gauge(
            "cdc_source_lag_bytes", "server's current WAL LSN minus the slot's confirmed LSN", c, registry=r
        )
        self.retained_wal_bytes = Gauge(
            "cdc_replication_slot_retained_wal_bytes",
            "WAL the slot holds back on the POS server",
            c,
            registry=r,
        )
        self.end_to_end_lag = Gauge(
            "cdc_end_to_end_lag_seconds",
            "now minus the source commit time of the last change applied (0 when idle)",
            c,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "cdc_end_to_end_latency_seconds",
            "source commit to sink commit, per change",
            c,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "cdc_events_total", "changes read from the source", c + ["table", "op"], registry=r
        )
        self.filtered = Counter(
            "cdc_events_filtered_total",
            "changes a stage left out (a filter, a pick)",
            c + ["stage"],
            registry=r,
        )
        self.held = Counter(
            "cdc_events_held_total", "changes held back (quarantine, dead letter)", c + ["reason"], registry=r
        )
        self.sink_batch = Histogram(
            "cdc_sink_batch_seconds",
            "time to write and commit one sink batch",
            c,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.kafka_lag = Gauge(
            "cdc_kafka_consumer_lag_records",
            "records behind the partition's end",
            c + ["topic", "partition"],
            registry=r,
        )
        self.kafka_producer_errors = Counter(
            "cdc_kafka_producer_errors_total",
            "batches Kafka did not acknowledge (the source was not confirmed past them)",
            c,
            registry=r,
        )
        self.kafka_unconfirmed = Gauge(
            "cdc_kafka_unconfirmed_events",
            "records sent to Kafka whose source position is not yet acknowledged and confirmed",
            c,
            registry=r,
        )
        self.reconcile_drift = Gauge(
            "cdc_reconcile_drift_rows",
            "drift the last reconcile found (and did not repair), by kind: missing, extra, different",
            c + ["kind"],
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "cdc_reconcile_last_run_timestamp_seconds", "wall time the last reconcile finished", c, registry=r
        )
        self.reconcile_duration = Gauge(
            "cdc_reconcile_duration_seconds", "how long the last reconcile took", c, registry=r
        )
        self.up = Gauge("cdc_connector_up", "1 running, 0 stopped or failed", c, registry=r)
        self.hot_path = Gauge(
            "cdc_hot_path_info",
            "1 for the path the per-change hot modules run: compiled (Cython), mixed or pure (Python)",
            c + ["path"],
            registry=r,
        )
        self.last_commit = Gauge(
            "cdc_last_commit_timestamp_seconds", "wall time of the last sink commit", c, registry=r
        )
        self.healthy = threading.Event()

    def serve(self, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok = metrics.healthy.is_set()
                    body, ctype, code = (
                        (b"ok\n" if ok else b"not running\n"),
                        "text/plain",
                        200 if ok else 503,
                    )
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        return server
