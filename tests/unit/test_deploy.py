"""The deployment files in deploy/: the Grafana dashboard and the Prometheus alerts only query metrics (and
labels) the code exports, with functions that fit their types; the dashboard is importable and filtered by
`$connector` everywhere; promtool accepts the Prometheus files and their unit tests pass; the systemd unit
and the Containerfile run the CLI the way it actually works.

The exported metrics come from `cdc.metrics.Metrics().registry`, not from a list in this file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from cdc.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "pos-cdc-dashboard.json"
PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "pos-cdc.yaml"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
UNIT = DEPLOY / "systemd" / "cdc@.service"
CONTAINERFILE = DEPLOY / "Containerfile"

EXPECTED_ALERTS = {
    "CdcEndToEndLagHigh",
    "CdcReplicationSlotRetainedWalHigh",
    "CdcConnectorDown",
    "CdcHeldEventsRising",
    "CdcNoCommitsWhileLagging",
    "CdcKafkaConsumerLagHigh",
    "CdcKafkaProducerErrors",
    "CdcReconcileDriftLeft",
    "CdcReconcileNotRun",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# labels every scraped series has besides its own
TARGET_LABELS = {"job", "instance"}

METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])cdc_[a-z_]+")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RATE_RE = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv|histogram_quantile)\s*\(")


# ------------------------------------------------------------------------------------------- helpers


def exported() -> dict[str, tuple[str, str, frozenset[str]]]:
    """Series name as queried -> (family name, type, label names), from the code's registry."""
    metrics = Metrics()
    # prometheus_client keeps label names on the metric objects only, not in collect()'s families
    labels = {
        m._name: frozenset(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)
    }
    out: dict[str, tuple[str, str, frozenset[str]]] = {}
    for fam in metrics.registry.collect():
        names = labels.get(fam.name, frozenset())
        if fam.type == "counter":
            out[fam.name + "_total"] = (fam.name, fam.type, names)
        elif fam.type == "histogram":
            out[fam.name + "_bucket"] = (fam.name, fam.type, names | {"le"})
            out[fam.name + "_sum"] = (fam.name, fam.type, names)
            out[fam.name + "_count"] = (fam.name, fam.type, names)
        else:
            out[fam.name] = (fam.name, fam.type, names)
    return out


EXPORTED = exported()


def strip_strings(expr: str) -> str:
    return STRING_RE.sub('""', expr)


def metric_names(expr: str) -> list[str]:
    """cdc_* identifiers in a PromQL expression (string literals, e.g. label values, left out)."""
    return METRIC_RE.findall(strip_strings(expr))


def strip_strings_keep_length(expr: str) -> str:
    return STRING_RE.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)


def selectors(expr: str) -> list[tuple[str, str | None]]:
    """(metric, its label matchers as written, or None) for each cdc_* metric in the expression."""
    text = strip_strings_keep_length(expr)  # same offsets as expr, no braces or names inside strings
    out = []
    for m in METRIC_RE.finditer(text):
        start = len(text) - len(text[m.end() :].lstrip())
        if text.startswith("{", start):
            out.append((m.group(0), expr[start + 1 : text.index("}", start)]))
        else:
            out.append((m.group(0), None))
    return out


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"dashboard:{p['title']}:{t.get('refId')}", t["expr"])
        for p in query_panels(load_dashboard())
        for t in p.get("targets", [])
        if "expr" in t
    ]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


def alert_exprs() -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for r in alert_rules():
        n = seen[r["alert"]] = seen.get(r["alert"], 0) + 1
        out.append((f"alert:{r['alert']}#{n}", r["expr"]))
    return out


ALL_EXPRS = dashboard_exprs() + alert_exprs()


def expr_labels(expr: str) -> set[str]:
    """Label names an expression can carry: those of its cdc_* metrics plus the target labels."""
    out = set(TARGET_LABELS)
    for name in metric_names(expr):
        if name in EXPORTED:
            out |= EXPORTED[name][2]
    return out


# ----------------------------------------------------------------------------- metrics and PromQL


def test_the_code_exports_metrics_at_all():
    assert EXPORTED, "cdc.metrics.Metrics() registers no metrics"
    assert all(labels >= {"connector"} for _, _, labels in EXPORTED.values()), (
        "docs/reference.md: `connector` on all"
    )


def test_every_exported_metric_is_documented_for_users():
    """docs/reference.md lists every metric the code exports, by the name Prometheus scrapes."""
    doc = (ROOT / "docs" / "reference.md").read_text()
    for family, kind, _ in EXPORTED.values():
        scraped = f"{family}_total" if kind == "counter" else family
        assert f"`{scraped}`" in doc, f"{scraped} is exported but not in docs/reference.md"


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_every_metric_queried_is_exported(where, expr):
    names = metric_names(expr)
    assert names or where.startswith("alert:"), f"{where}: no cdc_* metric in {expr!r}"
    for name in names:
        if name not in EXPORTED:
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
            hint = ""
            if base and base + "_bucket" not in EXPORTED:
                hint = f" ({base} is not a histogram)"
            elif name + "_bucket" in EXPORTED:
                hint = " (a histogram: query its _bucket, _sum or _count series)"
            elif name + "_total" in EXPORTED:
                hint = " (a counter: its series is named ..._total)"
            pytest.fail(f"{where}: {name} is not exported by cdc.metrics{hint}; exported: {sorted(EXPORTED)}")


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_functions_fit_the_metric_types(where, expr):
    """rate()/increase() only on counters and histogram series; histogram_quantile() only over _bucket;
    gauges as they are."""
    text = strip_strings_keep_length(expr)
    for m in RATE_RE.finditer(text):
        func = m.group(1)
        inner = METRIC_RE.search(text, m.end())
        if inner is None:
            continue
        name = inner.group(0)
        if name not in EXPORTED:
            continue  # reported by test_every_metric_queried_is_exported
        kind = EXPORTED[name][1]
        if func == "histogram_quantile":
            assert name.endswith("_bucket") and kind == "histogram", f"{where}: {func} over {name}"
        elif func in ("rate", "irate", "increase"):
            assert kind in ("counter", "histogram"), f"{where}: {func}() of the {kind} {name}"
        else:
            assert kind == "gauge", f"{where}: {func}() of the {kind} {name}"


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_labels_in_selectors_and_groupings_exist(where, expr):
    for name, matchers in selectors(expr):
        if matchers is None or name not in EXPORTED:
            continue
        for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", strip_strings(matchers)):
            assert label in EXPORTED[name][2] | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
    known = expr_labels(expr)
    for group in GROUPING_RE.findall(strip_strings(expr)):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in known, f"{where}: grouping by {label!r}, which none of its metrics has"


def test_dashboard_covers_every_exported_metric():
    families = {family for family, _, _ in EXPORTED.values()}
    used = {EXPORTED[n][0] for _, expr in dashboard_exprs() for n in metric_names(expr) if n in EXPORTED}
    assert families - used == set(), f"metrics without a dashboard panel: {sorted(families - used)}"


# ------------------------------------------------------------------------------------------ dashboard


def test_dashboard_is_importable():
    d = load_dashboard()
    assert d["schemaVersion"] >= 36 and d["title"] and d["uid"]
    assert d.get("id") is None, "an exported dashboard carries no database id"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds_vars = {n for n, v in variables.items() if v["type"] == "datasource" and v["query"] == "prometheus"}
    inputs = {i["name"] for i in d.get("__inputs", []) if i.get("pluginId") == "prometheus"}
    assert ds_vars or inputs, "needs a Prometheus datasource variable or a ${DS_...} input"

    conn = variables["connector"]
    query = conn["query"]["query"] if isinstance(conn["query"], dict) else conn["query"]
    assert conn["type"] == "query"
    assert re.fullmatch(r"label_values\(\s*cdc_connector_up\s*,\s*connector\s*\)", query), query
    assert conn["datasource"]["uid"] in {f"${{{n}}}" for n in ds_vars | inputs}

    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = [(p["gridPos"], p["title"]) for p in panels]
    for i, (a, ta) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, f"{ta}: wider than the grid"
        for b, tb in boxes[i + 1 :]:
            overlap = (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            )
            assert not overlap, f"panels {ta!r} and {tb!r} overlap"


def test_every_panel_has_a_datasource_and_targets_filtered_by_connector():
    d = load_dashboard()
    variables = {v["name"] for v in d["templating"]["list"]} | {i["name"] for i in d.get("__inputs", [])}
    panels = query_panels(d)
    assert panels
    for p in panels:
        title = p["title"]
        ds = p.get("datasource")
        assert isinstance(ds, dict) and ds.get("type") == "prometheus", f"{title}: datasource {ds!r}"
        ref = re.fullmatch(r"\$\{(\w+)\}", ds.get("uid", ""))
        assert ref and ref.group(1) in variables, f"{title}: datasource uid {ds.get('uid')!r} is no variable"
        targets = p.get("targets") or []
        assert targets, f"{title}: no targets"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{title}: refIds {refs}"
        for t in targets:
            assert t.get("expr", "").strip(), f"{title}/{t.get('refId')}: empty expr"
            assert t.get("datasource", ds) == ds, f"{title}/{t['refId']}: target datasource differs"
            for name, matchers in selectors(t["expr"]):
                assert matchers is not None and re.search(
                    r'\bconnector\s*=~\s*"\$(?:connector|\{connector\})"', matchers
                ), f'{title}/{t["refId"]}: {name} is not filtered by connector=~"$connector"'
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                assert label in expr_labels(t["expr"]), f"{title}/{t['refId']}: legend uses {label!r}"


def test_grafana_provisioning():
    provider = yaml.safe_load(PROVIDER.read_text())
    assert provider["apiVersion"] == 1
    [p] = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"].startswith("/")
    datasources = yaml.safe_load(DATASOURCE.read_text())
    assert datasources["apiVersion"] == 1
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")


# ----------------------------------------------------------------------------------------- Prometheus


def test_alert_rules_are_complete():
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= EXPECTED_ALERTS
    exprs = {r["alert"]: [x["expr"] for x in rules if x["alert"] == r["alert"]] for r in rules}
    assert any(re.search(r"\babsent\(\s*cdc_connector_up\b", e) for e in exprs["CdcConnectorDown"])
    assert any(re.search(r"\bcdc_connector_up\b[^()]*==\s*0", e) for e in exprs["CdcConnectorDown"])
    assert any(
        re.search(r"\bsum\b(?:\s+by\s*\([^)]*\))?\s*\(\s*cdc_reconcile_drift_rows\s*\)\s*>\s*0", e)
        for e in exprs["CdcReconcileDriftLeft"]
    )
    assert any(
        re.search(r"time\(\)\s*-\s*cdc_reconcile_last_run_timestamp_seconds\s*>\s*26\s*\*\s*3600", e)
        for e in exprs["CdcReconcileNotRun"]
    )
    for r in rules:
        name = r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), name
        assert r["annotations"]["summary"].strip(), f"{name}: no summary"
        description = r["annotations"]["description"]
        assert re.search(r"`(cdc|journalctl|systemctl) ", description), f"{name}: description says what to do"
        known = expr_labels(r["expr"]) | set(r.get("labels", {}))
        for label in re.findall(r"\$labels\.(\w+)", json.dumps(r["annotations"])):
            assert label in known, f"{name}: annotation uses $labels.{label}, which its expression lacks"


def test_every_alert_fires_and_stays_silent_in_the_promtool_tests():
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), f"alerts never tested firing: {sorted(names - fired)}"
    assert names - silent == set(), f"alerts never tested staying silent: {sorted(names - silent)}"


def test_prometheus_scrapes_pos_cdc_and_loads_the_rules():
    config = yaml.safe_load(PROMETHEUS.read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    assert ALERTS.name in config["rule_files"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "pos-cdc"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "127.0.0.1:9187" in targets
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # the absent()/up alerts select this job by name
    assert all('job="pos-cdc"' in e for _, e in alert_exprs() if re.search(r"\b(absent|up)\b", e))


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found on PATH (Debian: apt-get install prometheus; or scripts/setup.sh --with-test-tools)"
        if _ci():
            pytest.fail(f"{message}; CI is set, so the Prometheus files must be checked")
        pytest.skip(message)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool(args):
    promtool = _promtool()
    done = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_promtool_parses_the_dashboard_queries(tmp_path):
    """Each dashboard query, with Grafana's variables filled in, as a recording rule for `promtool check rules`."""
    promtool = _promtool()
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        expr = re.sub(r"\$__\w+|\$\{__\w+\}", "1m", expr)  # $__rate_interval, $__interval, ...
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $connector
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{path.read_text()}"


# --------------------------------------------------------------------------- systemd and container


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def cli_commands() -> dict:
    import typer.main

    from cdc.cli import app

    return typer.main.get_command(app).commands


CODE_SPAN_RE = re.compile(r"`([^`\n]+)`")
CDC_CALL_RE = re.compile(r"(?<![\w@/.-])cdc\s+([a-z][a-z-]*)([^'`;|]*)")


def operator_texts() -> list[tuple[str, str]]:
    """(where, text) of everything that tells on-call what to run: alert annotations, dashboard panel
    descriptions, deploy/README.md (its code spans and its shell blocks)."""
    out = [(f"alert:{r['alert']}:{k}", v) for r in alert_rules() for k, v in r["annotations"].items()]
    out += [(f"dashboard:{p['title']}", p.get("description", "")) for p in all_panels(load_dashboard())]
    prose, block = [], None  # block: the language of the fenced block we are in
    for line in (DEPLOY / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            block = None if block is not None else line.lstrip()[3:].strip()
        elif block is None:
            prose.append(line)
        elif block in ("", "sh", "bash") and line.split("#")[0].strip():
            out.append(("README.md (shell)", "`" + line.split("#")[0].strip() + "`"))
    out.append(("README.md", "\n".join(prose)))
    return out


def test_operator_texts_name_real_commands_and_flags():
    """Every `cdc COMMAND ...` the alerts, the dashboard and deploy/README.md tell on-call to run is a command
    of the CLI, with its options and (quarantine, deadletter) its actions."""
    commands = cli_commands()
    calls = 0
    for where, text in operator_texts():
        for span in CODE_SPAN_RE.findall(text):
            span = re.sub(r"\{\{.*?\}\}", "X", span)  # alert templates: {{ $labels.connector }}
            for name, rest in CDC_CALL_RE.findall(span):
                calls += 1
                assert name in commands, f"{where}: `cdc {name}` is no command ({sorted(commands)}): {span!r}"
                params = commands[name].params
                opts = {o for p in params for o in p.opts if o.startswith("-")} | {"--help"}
                words = [w.strip("[]") for w in rest.split()]
                for w in words:
                    if w.startswith("--"):
                        assert w.split("=")[0] in opts, f"{where}: `cdc {name}` has no option {w}: {span!r}"
                action = next((p for p in params if p.name == "action"), None)
                positional = [w for w in words if w and not w.startswith("-")]
                if action is not None and len(positional) > 1 and positional[1] not in ("...", "ACTION"):
                    allowed = {a.strip() for a in (action.help or "").split("|")}
                    assert positional[1] in allowed, (
                        f"{where}: `cdc {name}` has no action {positional[1]!r}: {span!r}"
                    )
    assert calls, "no `cdc ...` call found in the operator texts"


def test_systemd_unit():
    d = unit_directives()
    [exec_start] = d["ExecStart"]
    assert re.fullmatch(
        r"/usr/local/bin/cdc run /etc/pos-cdc/%i\.yaml --metrics-port \$\{METRICS_PORT\}", exec_start
    )
    assert "/etc/pos-cdc/%i.env" in [e.lstrip("-") for e in d["EnvironmentFile"]]
    assert d["Restart"] == ["on-failure"]
    assert d["KillSignal"] == ["SIGTERM"] and d["TimeoutStopSec"]
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")]:
        assert d.get(key) == [value], key
    assert d.get("DynamicUser") == ["yes"] or d.get("User", ["root"])[0] not in ("root", "0")

    run = cli_commands()["run"]
    assert "--metrics-port" in {o for p in run.params for o in p.opts}
    for pre in d.get("ExecStartPre", []):
        assert pre.split()[1] in cli_commands(), pre


def test_containerfile():
    text = CONTAINERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text).splitlines()
    lines = [ln.strip() for ln in joined if ln.strip() and not ln.strip().startswith("#")]

    def instr(name: str) -> list[str]:
        return [ln.split(None, 1)[1] for ln in lines if ln.split(None, 1)[0].upper() == name]

    assert instr("FROM")[-1].startswith("python:3.11-slim")
    user = instr("USER")
    assert user and user[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert json.loads(instr("ENTRYPOINT")[-1]) == ["cdc"]
    assert "9187" in instr("EXPOSE")[-1].split()
    [health] = instr("HEALTHCHECK")
    assert "http://127.0.0.1:9187/healthz" in health
    cmd = json.loads(instr("CMD")[-1])
    assert cmd[0] in cli_commands() and cmd[cmd.index("--metrics-port") + 1] == "9187"
