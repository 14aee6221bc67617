"""Organisations and wards (fleet/organisations.py): the status path a district
approves, its history and audit, tax codes, wards in their district, an organisation's
kiosks. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fleet import kiosks, organisations
from fleet.models import (ADMIN, DISTRICT_OFFICER, WARD_OFFICER, AuditLog, District, Kiosk,
                          Location)
from fleet.organisations import OrganisationError


@pytest.fixture
def place(fleet_db, fleet_config):
    with fleet_db() as s:
        q7, q1 = District(code="q7", name="Quận 7"), District(code="q1", name="Quận 1")
        s.add_all([q7, q1])
        s.flush()
        organisations.create_ward(s, code="tan-phong", name="Tân Phong", district=q7,
                                  actor="admin")
        s.commit()
    return fleet_db


def new_org(s, code="an-phat", **extra):
    q7 = s.scalar(select(District).where(District.code == "q7"))
    fields = dict(code=code, name="Công ty An Phát", kind="business", district=q7,
                  tax_code="0312345678", actor="lan", at=100.0)
    fields.update(extra)
    return organisations.create(s, **fields)


def test_the_status_path_with_history_and_audit(place):
    with place() as s:
        org = new_org(s)
        organisations.set_status(s, org, "approved", actor="lan", role=DISTRICT_OFFICER,
                                 quota=40, at=200.0)
        organisations.set_status(s, org, "suspended", actor="hoa", role="health_official",
                                 reason="F0 case on 2021-10-05", lift_by=WARD_OFFICER, at=300.0)
        assert (org.status, org.suspended_reason, org.lift_by) == (
            "suspended", "F0 case on 2021-10-05", WARD_OFFICER)
        with pytest.raises(OrganisationError, match="lifted by a ward_officer") as refused:
            organisations.set_status(s, org, "approved", actor="lan", role=DISTRICT_OFFICER)
        assert refused.value.status == 403
        organisations.set_status(s, org, "approved", actor="minh", role=WARD_OFFICER, at=400.0)
        organisations.set_status(s, org, "closed", actor="lan", role=DISTRICT_OFFICER,
                                 reason="moved", at=500.0)
        s.commit()
        rows = organisations.history(s, org)
        assert [(r.old_status, r.new_status, r.actor) for r in rows] == [
            (None, "applied", "lan"), ("applied", "approved", "lan"),
            ("approved", "suspended", "hoa"), ("suspended", "approved", "minh"),
            ("approved", "closed", "lan")]
        assert rows[1].detail == {"quota": 40} and org.quota == 40 and org.approved_at == 200.0
        assert (org.status, org.status_since, org.lift_by) == ("closed", 500.0, None)
        actions = [a.action for a in s.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions == ["ward.create", "organisation.create"] + ["organisation.status"] * 4


@pytest.mark.parametrize("start, to, extra, words", [
    ("applied", "approved", {}, "needs the worker quota"),
    ("applied", "approved", {"quota": 0}, "needs the worker quota"),
    ("applied", "approved", {"quota": True}, "needs the worker quota"),
    ("applied", "suspended", {"reason": "x"}, "is applied: it cannot become suspended"),
    ("approved", "suspended", {}, "needs its reason"),
    ("approved", "suspended", {"reason": "x", "lift_by": "manager"}, "lifted by one of"),
    ("closed", "approved", {"quota": 3}, "is closed: it cannot become approved"),
])
def test_refused_changes_change_nothing(place, start, to, extra, words):
    with place() as s:
        org = new_org(s)
        if start in ("approved", "closed"):
            organisations.set_status(s, org, "approved", actor="a", role=ADMIN, quota=5)
        if start == "closed":
            organisations.set_status(s, org, "closed", actor="a", role=ADMIN)
        before = (org.status, len(organisations.history(s, org)))
        with pytest.raises(OrganisationError, match=words):
            organisations.set_status(s, org, to, actor="a", role=ADMIN, **extra)
        assert (org.status, len(organisations.history(s, org))) == before


@pytest.mark.parametrize("fields, words", [
    ({"tax_code": "12345"}, "not a Vietnamese tax code"),
    ({"tax_code": "0312345678-1"}, "not a Vietnamese tax code"),
    ({"kind": "shop"}, "kind is one of"),
    ({"code": "An Phát"}, "code is 1-64"),
    ({"name": "  "}, "needs a name"),
])
def test_bad_organisations_are_refused(place, fields, words):
    with place() as s:
        with pytest.raises(OrganisationError, match=words):
            new_org(s, **fields)


def test_codes_tax_codes_and_wards_are_checked(place):
    with place() as s:
        new_org(s, tax_code="0312345678-001")
        with pytest.raises(OrganisationError, match="exists already") as twice:
            new_org(s, tax_code="0399999999")
        assert twice.value.status == 409
        with pytest.raises(OrganisationError, match="tax code 0312345678-001 exists"):
            new_org(s, code="other", tax_code="0312345678-001")
        q1 = s.scalar(select(District).where(District.code == "q1"))
        ward = s.scalar(select(organisations.Ward).where(organisations.Ward.code == "tan-phong"))
        with pytest.raises(OrganisationError, match="ward 'tan-phong' is not in district 'q1'"):
            new_org(s, code="q1-org", tax_code=None, district=q1, ward=ward)
        with pytest.raises(OrganisationError, match="exists already"):
            organisations.create_ward(s, code="tan-phong", name="x", district=q1, actor="a")
        with pytest.raises(OrganisationError, match="kind is one of"):
            organisations.create_ward(s, code="w2", name="x", district=q1, kind="city",
                                      actor="a")
        with pytest.raises(OrganisationError, match="no organisation with code 'nope'"):
            organisations.by_code(s, "nope")


def test_kiosks_of_an_organisation_are_those_at_its_control_points(place, fleet_config):
    with place() as s:
        org = new_org(s)
        q7 = s.scalar(select(District).where(District.code == "q7"))
        gate = Location(code="an-phat-gate", name="Cổng", address="", district_id=q7.id,
                        organisation_id=org.id)
        market = Location(code="q7-market", name="Chợ", address="", district_id=q7.id)
        s.add_all([gate, market])
        s.flush()
        for kid, loc in (("ap-2", gate), ("ap-1", gate), ("ap-old", gate), ("m-1", market)):
            kiosks.register(s, fleet_config, kiosk_id=kid, deployment="test",
                            policy="hcmc-2021", location=loc, actor="admin", at=1.0)
        s.flush()
        s.get(Kiosk, "ap-old").state = "retired"
        s.commit()
        assert [k.id for k in organisations.kiosks_of(s, org)] == ["ap-1", "ap-2"]
