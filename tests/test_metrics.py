"""Prometheus /metrics: parsed with prometheus_client's own parser and compared with
what the database holds, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from fleet.app import create_app
from fleet.config import load
from fleet.metrics import FleetCollector
from fleet.models import STATES, District, Kiosk, Location, Outage, PublishedBundle, Scan, ScanSummary
from tests.fleetdata import HOUR, NOW, scan, seed


def scrape(client, headers=None) -> dict:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    values = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def named(values: dict, name: str) -> dict:
    """{labels as a dict's items: value} of one metric."""
    return {labels: value for (n, labels), value in values.items() if n == name}


def expected_from_db(sessions) -> dict:
    """The same figures, computed in Python from every row (not with the collector's SQL)."""
    with sessions() as s:
        districts = {d.id: d.code for d in s.scalars(select(District))}
        locations = {loc.id: districts.get(loc.district_id, "") for loc in s.scalars(select(Location))}
        kiosks = s.scalars(select(Kiosk)).all()
        where = {k.id: locations.get(k.location_id, "") for k in kiosks}
        scans = s.scalars(select(Scan)).all()
        bundles = s.scalars(select(PublishedBundle)).all()
        outages = s.scalars(select(Outage)).all()
        summaries = s.scalars(select(ScanSummary)).all()
    newest = {}
    for b in bundles:
        key = (("deployment", b.deployment), ("kind", b.kind))
        if key not in newest or b.version > newest[key].version:
            newest[key] = b
    last = max(scans, key=lambda r: r.id) if scans else None
    summed = Counter()
    for row in summaries:
        summed[row.decision] += row.count
    # every state of every district (and of none) is a series, 0 when empty
    places = [""] + sorted(districts.values())
    per_state = {(("district", d), ("state", st)): 0 for d in places for st in STATES}
    per_state.update(Counter((("district", where[k.id]), ("state", k.state)) for k in kiosks))
    open_now = {(("district", d),): 0 for d in places}
    open_now.update(Counter((("district", where.get(o.kiosk_id, "")),) for o in outages
                            if o.ended is None))
    return {
        "kiosks": per_state,
        "outages": open_now,
        "version": {key: b.version for key, b in newest.items()},
        "issued": {key: b.issued_at for key, b in newest.items()},
        "stored": dict(Counter((("decision", r.decision),) for r in scans)),
        "summarized": {(("decision", d),): n for d, n in summed.items()},
        "last_hour": dict(Counter((("decision", r.decision),) for r in scans
                                  if NOW - HOUR <= r.ts <= NOW)),
        "lag": NOW - last.received if last else None,
        "delay": last.received - last.ts if last else None,
    }


def check(values, expected):
    assert named(values, "greengate_fleet_up") == {(): 1.0}
    assert named(values, "greengate_fleet_kiosks") == expected["kiosks"]
    assert named(values, "greengate_fleet_open_outages") == expected["outages"]
    assert named(values, "greengate_fleet_bundle_version") == expected["version"]
    assert named(values, "greengate_fleet_bundle_issued_timestamp_seconds") == expected["issued"]
    assert named(values, "greengate_fleet_scans_stored") == expected["stored"]
    assert named(values, "greengate_fleet_scans_summarized") == expected["summarized"]
    assert named(values, "greengate_fleet_scans_last_hour") == expected["last_hour"]
    assert named(values, "greengate_fleet_newest_scan_age_seconds") == (
        {(): pytest.approx(expected["lag"])} if expected["lag"] is not None else {})
    assert named(values, "greengate_fleet_scan_delay_seconds") == (
        {(): pytest.approx(expected["delay"])} if expected["delay"] is not None else {})


@pytest.fixture
def metrics_app(fleet_app, fleet_db):
    fleet_app.config["GREENGATE_CLOCK"] = lambda: NOW
    ids = seed(fleet_db)
    return fleet_app, fleet_db, ids


def test_metrics_match_the_database_and_follow_it(metrics_app):
    app, sessions, ids = metrics_app
    client = app.test_client()
    values = scrape(client)  # no scans yet: no lag metrics at all
    expected = expected_from_db(sessions)
    check(values, expected)
    assert named(values, "greengate_fleet_kiosks")[(("district", "q1"), ("state", "online"))] == 2
    assert named(values, "greengate_fleet_kiosks")[(("district", ""), ("state", "retired"))] == 1
    assert named(values, "greengate_fleet_bundle_version")[(("deployment", "test"),
                                                           ("kind", "trust"))] == 5
    # a district without an outage and "no district" read 0, not nothing
    assert named(values, "greengate_fleet_open_outages") == {
        (("district", ""),): 0, (("district", "q1"),): 1, (("district", "q3"),): 1}
    assert named(values, "greengate_fleet_kiosks")[(("district", "q3"), ("state", "degraded"))] == 0

    # Scans, a summary, a kiosk coming back: the next scrape reads the database again.
    with sessions() as s:
        s.add_all([scan(n, "q1-a", ids.market, ids.q1, NOW - 7200 + n * 60,
                        "red" if n % 3 == 0 else "green", "expired" if n % 3 == 0 else "ok")
                   for n in range(100)])
        s.add(scan(100, "q3-a", ids.station, ids.q3, NOW - 50))
        s.flush()
        s.execute(update(Scan).where(Scan.scan_id == "scan00000100").values(received=NOW - 20))
        s.add(ScanSummary(kiosk_id="q1-a", summary_id="s" + "a" * 16, hour=int(NOW - HOUR),
                          decision="red", reason="expired", count=17, first=NOW - 3000,
                          last=NOW - 2000, location_id=ids.market, district_id=ids.q1))
        s.execute(update(Kiosk).where(Kiosk.id == "q3-a").values(state="online"))
        s.execute(update(Outage).where(Outage.kiosk_id == "q3-a").values(ended=NOW - 60))
        s.commit()
    values = scrape(client)
    check(values, expected_from_db(sessions))
    assert named(values, "greengate_fleet_scans_stored") == {(("decision", "red"),): 34,
                                                             (("decision", "green"),): 67}
    assert named(values, "greengate_fleet_scans_last_hour") == {(("decision", "red"),): 14,
                                                                (("decision", "green"),): 27}
    assert named(values, "greengate_fleet_scans_summarized") == {(("decision", "red"),): 17}
    assert named(values, "greengate_fleet_newest_scan_age_seconds") == {(): 20.0}
    assert named(values, "greengate_fleet_scan_delay_seconds") == {(): 30.0}
    assert named(values, "greengate_fleet_open_outages") == {
        (("district", ""),): 0, (("district", "q1"),): 1, (("district", "q3"),): 0}
    assert named(values, "greengate_fleet_kiosks")[(("district", "q3"), ("state", "online"))] == 1


def test_metrics_openmetrics_on_request(metrics_app):
    app, _sessions, _ids = metrics_app
    response = app.test_client().get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_metrics_token_when_configured(fleet_config, fleet_db):
    config = load(None, env={}, fleet=dict(fleet_config.sections["fleet"]),
                  metrics={"token": "s3cret-scrape"})
    app = create_app(config)
    try:
        client = app.test_client()
        response = client.get("/metrics")
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.get_data(as_text=True)
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        values = scrape(client, {"Authorization": "Bearer s3cret-scrape"})
        assert named(values, "greengate_fleet_up") == {(): 1.0}
    finally:
        app.extensions["greengate"].engine.dispose()


def test_metrics_say_down_when_the_database_fails():
    def broken():
        raise OSError("connection refused")

    families = list(FleetCollector(broken, lambda: NOW).collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("greengate_fleet_up", [0])]
