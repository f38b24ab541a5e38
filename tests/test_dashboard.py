"""
The Grafana dashboard and the Prometheus alerting rules in ``docs/deploy/``
query only metrics a member really exposes, so neither shows an empty panel
or a rule that can never fire after a rename.
"""

import json
import re
from pathlib import Path

import yaml

from tests.test_http import IDS, bounded, cluster  # noqa: F401 (fixture)

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
METRIC = re.compile(r"\btxraft_[a-z_]+")


def dashboard_queries():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    return {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard["panels"]}


def alert_queries():
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text())
    return {rule["alert"]: [rule["expr"]] for group in rules["groups"] for rule in group["rules"]}


def test_the_dashboard_has_the_panels_an_operator_watches():
    titles = " / ".join(dashboard_queries()).lower()
    for topic in ("leader changes", "elections", "commit latency", "follower lag", "snapshot", "fsync time",
                  "snapshot size", "reads"):
        assert topic in titles


@bounded(30)
async def test_every_metric_the_dashboard_and_the_alerts_query_is_exposed(cluster):  # noqa: F811
    leader = cluster.agreed_leader()
    response, _ = await cluster.request("PUT", cluster.url(leader, "k"), data=b"v")
    assert response.code == 200
    response, body = await cluster.request("GET", cluster.url(leader) + "/metrics")
    exposed = set()
    for line in body.decode().splitlines():
        if line.startswith("txraft_"):
            exposed.add(line.split("{")[0].split(" ")[0])
        elif line.startswith("# TYPE txraft_"):
            # A labelled family with no sample yet (no failure so far) is declared only.
            _, _, family, kind = line.split(" ")
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(kind, ("",))
            exposed.update([family] + [family + suffix for suffix in suffixes])
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        for name, expressions in queries.items():
            for expression in expressions:
                used = set(METRIC.findall(expression))
                assert used or expression.startswith("up{"), f"{source} {name!r} queries no txraft metric"
                assert used <= exposed, f"{source} {name!r}: {sorted(used - exposed)} not exposed"
