"""Organisations and wards: the records and the status path a district approves
(docs/organisations.md). The API and the pages are to call these; every change is
audited and an organisation's status changes are kept as its history.

    applied --approve(quota)--> approved --suspend(reason, lift_by)--> suspended
    suspended --lift--> approved;  applied | approved | suspended --close--> closed (final)
"""

from __future__ import annotations

import re
import time

from sqlalchemy import select

from . import audit
from .refusals import N_, Text, status_word
from .models import (ADMIN, APPLIED, APPROVED, CLOSED, DISTRICT_OFFICER, HEALTH_OFFICIAL,
                     ORG_KINDS, RETIRED, SUSPENDED, WARD_KINDS, WARD_OFFICER, District, Kiosk,
                     Location, Organisation, OrganisationStatusChange, Ward)

CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# Mã số thuế: 10 digits for an enterprise, 10 + "-" + 3 for a branch or dependent unit.
TAX_CODE = re.compile(r"^\d{10}(-\d{3})?$")
NEXT = {APPLIED: {APPROVED, CLOSED}, APPROVED: {SUSPENDED, CLOSED},
        SUSPENDED: {APPROVED, CLOSED}, CLOSED: set()}
LIFTERS = (WARD_OFFICER, DISTRICT_OFFICER, HEALTH_OFFICIAL)


class OrganisationError(Exception):
    """A change refused; `status` is the HTTP status an API would answer. `message` is
    a refusals.Text: English for the API, `refusals.translated(message)` for a page."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message, self.status = message, status


def _not_a_tax_code(tax_code: str) -> Text:
    return Text(N_("tax code '%(tax_code)s' is not a Vietnamese tax code (10 digits, or 10 "
                   "digits, '-' and 3 digits)"), tax_code=tax_code)


def _tax_code_taken(tax_code: str) -> Text:
    return Text(N_("an organisation with tax code %(tax_code)s exists already"),
                tax_code=tax_code)


def by_code(session, code: str) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.code == code))
    if org is None:
        raise OrganisationError(Text(N_("no organisation with code '%(code)s'"), code=code), 404)
    return org


def create_ward(session, *, code: str, name: str, district: District, kind: str = "phuong",
                actor: str) -> Ward:
    if not CODE.match(code or ""):
        raise OrganisationError(Text(N_("a ward code is 1-64 lower-case letters, digits and "
                                         "'-'")))
    if kind not in WARD_KINDS:
        raise OrganisationError(Text(N_("a ward's kind is one of %(kinds)s"),
                                     kinds=", ".join(WARD_KINDS)))
    if not (name or "").strip():
        raise OrganisationError(Text(N_("a ward needs a name")))
    if session.scalar(select(Ward.id).where(Ward.code == code)) is not None:
        raise OrganisationError(Text(N_("a ward with code '%(code)s' exists already"),
                                     code=code), 409)
    ward = Ward(code=code, name=name.strip(), kind=kind, district_id=district.id)
    session.add(ward)
    audit.record(session, actor, "ward.create", code, district=district.code, kind=kind)
    return ward


def create(session, *, code: str, name: str, kind: str, district: District,
           ward: Ward | None = None, tax_code: str | None = None, sector: str = "",
           contact_name: str = "", contact_phone: str = "", contact_email: str = "",
           actor: str, at: float | None = None) -> Organisation:
    """A new organisation, in status applied."""
    at = time.time() if at is None else at
    if not CODE.match(code or ""):
        raise OrganisationError(Text(N_("an organisation code is 1-64 lower-case letters, "
                                         "digits and '-'")))
    if kind not in ORG_KINDS:
        raise OrganisationError(Text(N_("an organisation's kind is one of %(kinds)s"),
                                     kinds=", ".join(ORG_KINDS)))
    if not (name or "").strip():
        raise OrganisationError(Text(N_("an organisation needs a name")))
    if tax_code is not None and not TAX_CODE.match(tax_code):
        raise OrganisationError(_not_a_tax_code(tax_code))
    if ward is not None and ward.district_id != district.id:
        raise OrganisationError(Text(N_("ward '%(ward)s' is not in district '%(district)s'"),
                                     ward=ward.code, district=district.code))
    if session.scalar(select(Organisation.id).where(Organisation.code == code)) is not None:
        raise OrganisationError(Text(N_("an organisation with code '%(code)s' exists "
                                         "already"), code=code), 409)
    if tax_code is not None and session.scalar(
            select(Organisation.id).where(Organisation.tax_code == tax_code)) is not None:
        raise OrganisationError(_tax_code_taken(tax_code), 409)
    org = Organisation(code=code, name=name.strip(), kind=kind, tax_code=tax_code,
                       sector=sector, district_id=district.id,
                       ward_id=ward.id if ward is not None else None,
                       contact_name=contact_name, contact_phone=contact_phone,
                       contact_email=contact_email, status=APPLIED, status_since=at,
                       suspended_reason="", created_at=at)
    session.add(org)
    session.flush()
    session.add(OrganisationStatusChange(organisation_id=org.id, at=at, old_status=None,
                                         new_status=APPLIED, actor=actor, reason=""))
    audit.record(session, actor, "organisation.create", code, district=district.code,
                 kind=kind)
    return org


def set_status(session, org: Organisation, new_status: str, *, actor: str, role: str,
               reason: str = "", quota: int | None = None, lift_by: str | None = None,
               detail: dict | None = None, at: float | None = None
               ) -> OrganisationStatusChange:
    """Move `org` along its status path; `role` is the actor's (a suspension is lifted
    only by the role it names, or an admin). Returns the history row."""
    at = time.time() if at is None else at
    old = org.status
    if new_status not in NEXT.get(old, set()):
        raise OrganisationError(Text(N_("organisation '%(code)s' is %(old)s: it cannot become "
                                         "%(new)s"), code=org.code, old=status_word(old),
                                     new=status_word(new_status)), 409)
    reason = (reason or "").strip()
    facts = dict(detail or {})
    if new_status == APPROVED and old == APPLIED:
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 1:
            raise OrganisationError(Text(N_("approving needs the worker quota (a whole number "
                                         ">= 1)")))
        org.quota, org.approved_at = quota, at
        facts["quota"] = quota
    elif new_status == APPROVED:  # lifting a suspension
        if role != ADMIN and role != org.lift_by:
            raise OrganisationError(Text(N_("this suspension is lifted by a %(role)s"),
                                     role=Text(org.lift_by or DISTRICT_OFFICER)), 403)
        org.suspended_reason, org.lift_by = "", None
    elif new_status == SUSPENDED:
        if not reason:
            raise OrganisationError(Text(N_("a suspension needs its reason")))
        lift_by = lift_by or DISTRICT_OFFICER
        if lift_by not in LIFTERS:
            raise OrganisationError(Text(N_("a suspension is lifted by one of %(roles)s"),
                                     roles=", ".join(LIFTERS)))
        org.suspended_reason, org.lift_by = reason[:400], lift_by
        facts["lift_by"] = lift_by
    org.status, org.status_since = new_status, at
    change = OrganisationStatusChange(organisation_id=org.id, at=at, old_status=old,
                                      new_status=new_status, actor=actor,
                                      reason=reason[:400], detail=facts or None)
    session.add(change)
    audit.record(session, actor, "organisation.status", org.code, old=old, new=new_status,
                 reason=reason, **facts)
    return change


# The sticker an approved organisation shows at its doors (the 2021 HCMC programme): a
# household business got its own name, every other kind the enterprise's.
STICKERS = {"household": "Hộ kinh doanh xanh"}
STICKER = "Doanh nghiệp xanh"


def sticker(org: Organisation | None) -> str | None:
    """The status sticker printed on its posters; None unless approved (an applied,
    suspended or closed organisation must not look open)."""
    if org is None or org.status != APPROVED:
        return None
    return STICKERS.get(org.kind, STICKER)


EDITABLE = ("name", "tax_code", "kind", "sector", "ward", "contact_name", "contact_phone",
            "contact_email")


def update(session, org: Organisation, *, actor: str, **fields) -> dict:
    """Change an organisation's record (not its district, code or status: those have
    their own path). `ward` is a Ward or None. Returns {field: [old, new]} (audited)."""
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise OrganisationError(Text(N_("cannot change %(fields)s"),
                                     fields=", ".join(sorted(unknown))))
    changes = {}
    if "name" in fields:
        name = (fields["name"] or "").strip()
        if not name:
            raise OrganisationError(Text(N_("an organisation needs a name")))
        fields["name"] = name
    if "kind" in fields and fields["kind"] not in ORG_KINDS:
        raise OrganisationError(Text(N_("an organisation's kind is one of %(kinds)s"),
                                     kinds=", ".join(ORG_KINDS)))
    if fields.get("tax_code") is not None:
        tax_code = fields["tax_code"]
        if not TAX_CODE.match(tax_code):
            raise OrganisationError(_not_a_tax_code(tax_code))
        if tax_code != org.tax_code and session.scalar(
                select(Organisation.id).where(Organisation.tax_code == tax_code)) is not None:
            raise OrganisationError(_tax_code_taken(tax_code), 409)
    if "ward" in fields:
        ward = fields.pop("ward")
        if ward is not None and ward.district_id != org.district_id:
            raise OrganisationError(Text(N_("ward '%(ward)s' is not in the organisation's "
                                             "district"), ward=ward.code))
        new_id = ward.id if ward is not None else None
        if new_id != org.ward_id:
            old = session.get(Ward, org.ward_id) if org.ward_id else None
            changes["ward"] = [old.code if old else None, ward.code if ward else None]
            org.ward_id = new_id
    for name, value in fields.items():
        value = value if value is not None or name == "tax_code" else ""
        if getattr(org, name) != value:
            changes[name] = [getattr(org, name), value]
            setattr(org, name, value)
    if changes:
        audit.record(session, actor, "organisation.update", org.code, **changes)
    return changes


def update_ward(session, ward: Ward, *, actor: str, name: str | None = None,
                kind: str | None = None) -> dict:
    """Rename a ward or change its kind (its code and district stay). Audited."""
    changes = {}
    if name is not None:
        if not name.strip():
            raise OrganisationError(Text(N_("a ward needs a name")))
        if name.strip() != ward.name:
            changes["name"] = [ward.name, name.strip()]
            ward.name = name.strip()
    if kind is not None:
        if kind not in WARD_KINDS:
            raise OrganisationError(Text(N_("a ward's kind is one of %(kinds)s"),
                                     kinds=", ".join(WARD_KINDS)))
        if kind != ward.kind:
            changes["kind"] = [ward.kind, kind]
            ward.kind = kind
    if changes:
        audit.record(session, actor, "ward.update", ward.code, **changes)
    return changes


def history(session, org: Organisation) -> list[OrganisationStatusChange]:
    return list(session.scalars(
        select(OrganisationStatusChange).where(OrganisationStatusChange.organisation_id == org.id)
        .order_by(OrganisationStatusChange.at, OrganisationStatusChange.id)))


def kiosks_of(session, org: Organisation) -> list[Kiosk]:
    """The kiosks (not retired) at the organisation's control points, in id order."""
    return list(session.scalars(
        select(Kiosk).join(Location, Kiosk.location_id == Location.id)
        .where(Location.organisation_id == org.id, Kiosk.state != RETIRED)
        .order_by(Kiosk.id)))
