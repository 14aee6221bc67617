"""Retention (fleet/retention.py): scans older than [fleet] retention_days are deleted,
in chunks, on SQLite and PostgreSQL; younger ones and everything else stay."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from fleet import retention
from fleet.cli import main
from fleet import quarantine
from fleet.models import AuditLog, Kiosk, QuarantinedMessage, Scan, ScanSummary
from tests.fleetdata import scan

DAY = 86400.0


def summary(n, hour):
    return ScanSummary(kiosk_id="k1", summary_id=f"sum{n}", hour=hour, decision="green",
                       reason="ok", count=5, first=hour, last=hour + 60)


def count(sessions, model):
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_purge_deletes_only_what_is_older_than_the_cutoff(fleet_db):
    before = 1_700_000_000.0 - (1_700_000_000.0 % 3600)  # on the hour
    with fleet_db() as s:
        s.add(Kiosk(id="k1", deployment="test", policy="hcmc-2021", state="online",
                    state_since=0, detail="", session=1))
        s.add_all([scan(i, "k1", None, None, before - 1000 + i * 100) for i in range(20)])
        s.add_all([summary(1, before - 7200), summary(2, before - 3600), summary(3, before)])
        s.add_all([QuarantinedMessage(**quarantine.row(received=before + offset, kiosk="k1",
                                                       topic="gg/v1/kiosk/k1/scan", kind="scan",
                                                       reason="not_json", raw=b"{"))
                   for offset in (-5000, -1, 0, 10)])
        s.commit()
    counts = retention.purge(fleet_db, before, chunk=3)  # chunks: several rounds
    assert counts == {"scans": 10, "summaries": 2, "quarantined": 2, "partitions": 0}
    with fleet_db() as s:
        assert min(s.scalars(select(Scan.ts))) == before  # not older: kept
        assert s.scalars(select(ScanSummary.summary_id)).all() == ["sum3"]  # hour not over
        (entry,) = s.scalars(select(AuditLog).where(AuditLog.action == "scans.purge")).all()
        assert entry.detail == {"before": before, "scans": 10, "summaries": 2, "quarantined": 2,
                                "partitions": 0, "dropped": []}
        assert sorted(s.scalars(select(QuarantinedMessage.received))) == [before, before + 10]
    assert count(fleet_db, Kiosk) == 1
    # again: nothing left to do, nothing audited
    assert retention.purge(fleet_db, before) == {"scans": 0, "summaries": 0, "quarantined": 0,
                                                 "partitions": 0}
    assert count(fleet_db, AuditLog) == 1


def test_cli_purges_by_the_configured_retention(fleet_config, fleet_db, monkeypatch, capsys):
    now = time.time()
    with fleet_db() as s:
        s.add_all([scan(1, "k1", None, None, now - 22 * DAY),  # past the default 21 days
                   scan(2, "k1", None, None, now - 20 * DAY),
                   scan(3, "k1", None, None, now - 60)])
        s.commit()
    monkeypatch.setenv("GREENGATE_FLEET_DATABASE_URL", fleet_config.database_url)
    monkeypatch.setenv("GREENGATE_FLEET_DATA_DIR", str(fleet_config.data_dir))
    assert main(["scans", "purge"]) == 0
    assert capsys.readouterr().out.strip() == ("purged 1 scan(s), 0 summary row(s) and 0 "
                                               "quarantined message(s) older than 21 days")
    assert main(["scans", "purge", "--days", "7"]) == 0
    assert "purged 1 scan(s)" in capsys.readouterr().out
    with fleet_db() as s:
        assert s.scalars(select(Scan.scan_id)).all() == ["scan00000003"]
    assert main(["scans", "purge", "--days", "0"]) == 2
    assert "--days must be at least 1" in capsys.readouterr().err
