"""Prometheus /metrics, read from the database at scrape time.

Nothing is counted in process memory: gunicorn runs several workers and a
scrape reaches any one of them, so every value comes from the database and is
the same whichever worker answers. The ingest worker exports its own
in-process counters (messages, bad messages, batches) on its own port.

Metrics (docs/api.md#metrics):

    greengate_fleet_up                               1 when the database answered
    greengate_fleet_kiosks{state,district}           kiosks per presence state
    greengate_fleet_open_outages{district}           kiosks in an outage now
    greengate_fleet_bundle_version{deployment,kind}  newest published version
    greengate_fleet_bundle_issued_timestamp_seconds{deployment,kind}
    greengate_fleet_scans_stored{decision}           scans in the database (falls at purges;
                                                     PostgreSQL: from ANALYZE's statistics)
    greengate_fleet_scans_summarized{decision}       decisions known only from summaries
    greengate_fleet_scans_last_hour{decision}        scans with ts in the last hour
    greengate_fleet_newest_scan_age_seconds          ingest lag: now - received of the newest scan
    greengate_fleet_scan_delay_seconds               received - ts of the newest scan
    greengate_fleet_quarantined_messages{kind}       rows in the quarantine table
    greengate_fleet_quarantined_last_hour{kind}      of them received in the last hour
    greengate_fleet_quarantined_reasons{kind,reason} rows per kind and reason
    greengate_fleet_kiosks_with_gaps                 kiosks missing confirmed decisions
    greengate_fleet_missing_decisions                decisions confirmed but not stored

Every family with fixed labels (kinds, states, the districts in the database) or none
has all its series on every scrape, 0 when there is nothing: an alert on `> 0` must not see a series vanish and come back.
Messages refused as they arrive are also the ingest worker's own counters
(greengate_ingest_bad_messages, greengate_ingest_quarantined: fleet/ingest_metrics.py);
these are what the database holds, the same whichever worker answers.

`[metrics] token` (optional) makes /metrics ask for `Authorization: Bearer <token>`
(Prometheus: `authorization: {credentials: …}`); either way, firewall it.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from sqlalchemy import func, select

from . import partitions, quarantine
from .models import (QUARANTINE_KINDS, STATES, District, Kiosk, Location, Outage,
                     PublishedBundle,
                     Scan, ScanSummary)

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


class FleetCollector:
    """A prometheus_client collector that queries the fleet database on every collect()."""

    def __init__(self, sessions, clock=time.time):
        self.sessions = sessions
        self.clock = clock

    def describe(self):
        return []  # collected only on scrape, never at registration

    def collect(self):
        up = GaugeMetricFamily("greengate_fleet_up",
                               "1 if the fleet database answered this scrape, else 0")
        try:
            with self.sessions() as session:
                families = list(self._families(session))
        except Exception:  # a scrape must answer even when the database does not
            log.exception("metrics: the database query failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session):
        at = self.clock()

        kiosks = GaugeMetricFamily("greengate_fleet_kiosks",
                                   "Kiosks per presence state and district (code; empty: none)",
                                   labels=["state", "district"])
        # every state of every district (and of no district) is a series, 0 when empty:
        # a state emptied must read 0, not vanish and leave the last value in a graph
        districts = [""] + list(session.scalars(select(District.code).order_by(District.code)))
        per = {(state, district): 0 for district in districts for state in STATES}
        rows = session.execute(
            select(Kiosk.state, District.code, func.count(Kiosk.id))
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .outerjoin(District, Location.district_id == District.id)
            .group_by(Kiosk.state, District.code)).all()
        for state, district, count in rows:
            per[(state, district or "")] = per.get((state, district or ""), 0) + count
        for (state, district), count in per.items():
            kiosks.add_metric([state, district], count)
        yield kiosks

        outages = GaugeMetricFamily("greengate_fleet_open_outages",
                                    "Kiosks in an outage now, per district", labels=["district"])
        rows = session.execute(
            select(District.code, func.count(Outage.id)).select_from(Outage)
            .outerjoin(Kiosk, Kiosk.id == Outage.kiosk_id)
            .outerjoin(Location, Kiosk.location_id == Location.id)
            .outerjoin(District, Location.district_id == District.id)
            .where(Outage.ended.is_(None)).group_by(District.code)).all()
        open_now = dict.fromkeys(districts, 0)
        for district, count in rows:
            open_now[district or ""] = open_now.get(district or "", 0) + count
        for district, count in open_now.items():
            outages.add_metric([district], count)
        yield outages

        version = GaugeMetricFamily("greengate_fleet_bundle_version",
                                    "Newest published bundle version per deployment and kind",
                                    labels=["deployment", "kind"])
        issued = GaugeMetricFamily("greengate_fleet_bundle_issued_timestamp_seconds",
                                   "issued_at of the newest bundle per deployment and kind "
                                   "(alert well before the kiosks' offline budget)",
                                   labels=["deployment", "kind"])
        newest = (select(PublishedBundle.deployment, PublishedBundle.kind,
                         func.max(PublishedBundle.version).label("version"))
                  .group_by(PublishedBundle.deployment, PublishedBundle.kind).subquery())
        rows = session.execute(
            select(newest.c.deployment, newest.c.kind, newest.c.version,
                   func.max(PublishedBundle.issued_at))
            .join(PublishedBundle, (PublishedBundle.deployment == newest.c.deployment)
                  & (PublishedBundle.kind == newest.c.kind)
                  & (PublishedBundle.version == newest.c.version))
            .group_by(newest.c.deployment, newest.c.kind, newest.c.version)).all()
        for deployment, kind, v, issued_at in rows:
            version.add_metric([deployment, kind], v)
            issued.add_metric([deployment, kind], issued_at)
        yield version
        yield issued

        stored = GaugeMetricFamily("greengate_fleet_scans_stored",
                                   "Scans in the database per decision (falls when retention "
                                   "purges old scans); on PostgreSQL estimated from ANALYZE's "
                                   "statistics", labels=["decision"])
        connection = session.connection()
        if partitions.partitioned(connection):  # never a count of the whole table
            counts = sorted(partitions.decision_counts(connection).items())
        else:
            counts = session.execute(select(Scan.decision, func.count(Scan.id))
                                     .group_by(Scan.decision)).all()
        for decision, count in counts:
            stored.add_metric([decision], count)
        yield stored

        summarized = GaugeMetricFamily("greengate_fleet_scans_summarized",
                                       "Decisions known only as counts from outbox-overflow "
                                       "summaries, per decision", labels=["decision"])
        for decision, count in session.execute(
                select(ScanSummary.decision, func.sum(ScanSummary.count))
                .group_by(ScanSummary.decision)).all():
            summarized.add_metric([decision], int(count))
        yield summarized

        last_hour = GaugeMetricFamily("greengate_fleet_scans_last_hour",
                                      "Scans whose decision time is in the last hour, per "
                                      "decision", labels=["decision"])
        for decision, count in session.execute(
                select(Scan.decision, func.count(Scan.id))
                .where(Scan.ts >= at - 3600, Scan.ts <= at).group_by(Scan.decision)).all():
            last_hour.add_metric([decision], count)
        yield last_hour

        yield from self._quarantine(session, at)
        yield from self._gaps(session)

        # The newest scan by id (the primary key: no scan of the whole table).
        newest_scan = session.execute(
            select(Scan.received, Scan.ts).order_by(Scan.id.desc()).limit(1)).first()
        if newest_scan is not None:
            received, ts = newest_scan
            lag = GaugeMetricFamily("greengate_fleet_newest_scan_age_seconds",
                                    "Ingest lag: seconds since the newest stored scan was "
                                    "received (grows when ingest stops or no kiosk scans)")
            lag.add_metric([], max(0.0, at - received))
            yield lag
            delay = GaugeMetricFamily("greengate_fleet_scan_delay_seconds",
                                      "received - ts of the newest stored scan: how late it "
                                      "reached the fleet (outbox replay, clock skew)")
            delay.add_metric([], received - ts)
            yield delay


    @staticmethod
    def _quarantine(session, at: float):
        held = GaugeMetricFamily("greengate_fleet_quarantined_messages",
                                 "Messages in the quarantine table (refused by the ingest), "
                                 "per kind", labels=["kind"])
        recent = GaugeMetricFamily("greengate_fleet_quarantined_last_hour",
                                   "Quarantined messages received in the last hour, per kind",
                                   labels=["kind"])
        reasons = GaugeMetricFamily("greengate_fleet_quarantined_reasons",
                                    "Messages in the quarantine table per kind and reason",
                                    labels=["kind", "reason"])
        per_kind = dict.fromkeys(QUARANTINE_KINDS, 0)
        for (kind, reason), n in sorted(quarantine.totals(session).items()):
            per_kind[kind] = per_kind.get(kind, 0) + n
            reasons.add_metric([kind, reason], n)
        last_hour = dict.fromkeys(QUARANTINE_KINDS, 0)
        for (kind, _), n in quarantine.totals(session, since=at - 3600).items():
            last_hour[kind] = last_hour.get(kind, 0) + n
        for kind, n in per_kind.items():
            held.add_metric([kind], n)
        for kind, n in last_hour.items():
            recent.add_metric([kind], n)
        yield held
        yield recent
        yield reasons

    @staticmethod
    def _gaps(session):
        kiosks, missing = session.execute(
            select(func.count(Kiosk.id), func.coalesce(func.sum(Kiosk.seq_missing), 0))
            .where(Kiosk.seq_missing > 0)).one()
        with_gaps = GaugeMetricFamily("greengate_fleet_kiosks_with_gaps",
                                      "Kiosks with decisions they say the fleet confirmed that "
                                      "the fleet does not hold (docs/fleet.md#gaps)")
        with_gaps.add_metric([], kiosks)
        yield with_gaps
        lost = GaugeMetricFamily("greengate_fleet_missing_decisions",
                                 "Decisions confirmed to the kiosks but not stored: lost")
        lost.add_metric([], int(missing))
        yield lost


def registry_for(app) -> CollectorRegistry:
    """The app's own registry (no global state: several apps in one process, as in tests,
    do not collide). No process metrics: with several gunicorn workers they would describe
    whichever worker answered."""
    registry = app.extensions.get("greengate_metrics")
    if registry is None:
        fleet = app.extensions["greengate"]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(
            fleet.sessions, lambda: (app.config.get("GREENGATE_CLOCK") or time.time)()))
        app.extensions["greengate_metrics"] = registry
    return registry


def _token() -> str:
    return current_app.extensions["greengate"].config.metrics.token


@bp.get("/metrics")
def metrics():
    token = _token()
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return Response("send the [metrics] token as 'Authorization: Bearer <token>'\n",
                            status=401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    output = encoder(registry_for(current_app))
    return Response(output, status=200, headers={"Content-Type": content_type,
                                                 "Cache-Control": "no-store"})
