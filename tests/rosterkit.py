"""A small city for the roster tests (tests/test_roster_*.py): two districts, wards,
organisations approved and not, control points with kiosks, a manager, officers, and a
trust list holding a real test issuer whose signed HC1 QR texts link workers."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from fleet import auth, bundles, trust_list
from fleet.models import (APPLIED, APPROVED, District, Kiosk, Location, Organisation, User,
                          Ward)
from provisioning.issuer import standard_name

PASSWORD = "correct horse battery"
ISSUED = datetime(2021, 6, 1, tzinfo=timezone.utc)
EXPIRES = datetime(2031, 6, 1, tzinfo=timezone.utc)
AN = ("Nguyễn", "Văn An", "1990-01-01")
BINH = ("Lê", "Thị Bình", "1985-03-04")
CUONG = ("Trần", "Cường", "1979-12-31")


def holder(person) -> tuple[str, str, str]:
    """What the kiosk seals and the fleet keys: the DCC's fnt, gnt and dob."""
    family, given, dob = person
    return standard_name(family), standard_name(given), dob


def qr(issuer, person, dose: int = 1, ci: str | None = None) -> str:
    """A real HC1 QR text of a vaccination certificate of `person`, signed by `issuer`."""
    family, given, dob = person
    dcc = issuer.vaccination(date="2021-08-01", dose=dose, family=family, given=given, dob=dob,
                             ci=ci)
    return issuer.mint(dcc, iat=ISSUED, exp=EXPIRES)


def seed(sessions, config, issuer=None) -> dict:
    """The city; returns ids and API token headers ("token:<username>")."""
    out = {}
    with sessions() as s:
        q1, q2 = District(code="q1", name="Quận 1"), District(code="q2", name="Quận 2")
        s.add_all([q1, q2])
        s.flush()
        w1 = Ward(code="w1", name="Bến Nghé", district_id=q1.id)
        w2 = Ward(code="w2", name="Đa Kao", district_id=q1.id)
        s.add_all([w1, w2])
        s.flush()
        orgs = {}
        for code, status, quota, ward in (("org-a", APPROVED, 3, w1), ("org-b", APPROVED, 5, w2),
                                          ("org-c", APPLIED, None, w1)):
            orgs[code] = Organisation(code=code, name=f"Công ty {code[-1].upper()}",
                                      kind="business", district_id=q1.id, ward_id=ward.id,
                                      status=status, status_since=0.0, quota=quota,
                                      approved_at=0.0 if status == APPROVED else None,
                                      created_at=0.0)
        s.add_all(orgs.values())
        s.flush()
        for code, org, ward, kiosks in (("l-a", "org-a", w1, ("ka1", "ka2")),
                                        ("l-b", "org-b", w2, ("kb1",)),
                                        ("l-c", "org-c", w1, ("kc1",))):
            location = Location(code=code, name=f"Cổng {code}", district_id=q1.id,
                                ward_id=ward.id, organisation_id=orgs[org].id)
            s.add(location)
            s.flush()
            for kid in kiosks:
                s.add(Kiosk(id=kid, location_id=location.id, deployment="test"))
        for name, role, district, ward, org in (
                ("manager-a", "manager", None, None, "org-a"),
                ("manager-b", "manager", None, None, "org-b"),
                ("ward1", "ward_officer", None, w1, None),
                ("ward2", "ward_officer", None, w2, None),
                ("chief-q1", "district_officer", q1, None, None),
                ("chief-q2", "district_officer", q2, None, None),
                ("root", "admin", None, None, None), ("ops", "operator", None, None, None),
                ("health1", "health_official", None, None, None)):
            user = auth.create_user(s, name, PASSWORD, role,
                                    district.id if district else None,
                                    ward_id=ward.id if ward else None,
                                    organisation_id=orgs[org].id if org else None)
            s.flush()
            out[f"token:{name}"] = {
                "Authorization": f"Bearer {auth.create_token(s, user, 'tests')}"}
        s.commit()
        out.update({code: org.id for code, org in orgs.items()})
    if issuer is not None:
        signer = bundles.ensure_signing_key(config)
        with sessions() as s:
            trust_list.add(s, config, "test", issuer.pem, actor="test", key=signer)
    return out


def user_id(sessions, name: str) -> int:
    with sessions() as s:
        return s.scalar(select(User.id).where(User.username == name))
