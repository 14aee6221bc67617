"""Value sets as a list of their own (table value_set), and every stored policy in the
old JSON format converted to a CertLogic rule set (greengate.policy.convert_legacy).

The conversion is done here, not left to the code that reads policies: a fleet
must never hold two policy formats. A policy the converter refuses stops the
migration with its name (fix or delete it, then upgrade again) rather than
being skipped. Each conversion is audited (actor "migration 0007", with the
old document). The signed policy bundles of a deployment whose policies were
converted are deleted: they hold the old documents. Their ListVersion rows stay,
so the fleet signs the converted set as the next version (higher than any a
kiosk holds) the first time the deployment is used (`ensure_issued`: the HTTP
endpoint, the publisher, `greengate-fleet bundles refresh`).

Downgrade drops value_set and leaves the policies converted: the old format
cannot express every rule set, and a rule set is still readable as JSON.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""
import time
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ACTOR = "migration 0007"


def upgrade() -> None:
    op.create_table('value_set',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('deployment', sa.String(length=64), nullable=False),
    sa.Column('value_set_id', sa.String(length=64), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('updated_by', sa.String(length=100), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment', 'value_set_id', name='uq_value_set_deployment_id')
    )
    convert_policies(op.get_bind())


def is_legacy(document) -> bool:
    return isinstance(document, dict) and "rules" not in document


def convert_policies(bind) -> dict[str, list[str]]:
    """Convert every legacy policy document; {deployment: [names converted]}."""
    policy = sa.table('policy', sa.column('id', sa.Integer), sa.column('deployment', sa.String),
                      sa.column('name', sa.String), sa.column('document', sa.JSON),
                      sa.column('updated_by', sa.String), sa.column('updated_at', sa.Float))
    audit = sa.table('audit_log', sa.column('at', sa.Float), sa.column('actor', sa.String),
                     sa.column('action', sa.String), sa.column('target', sa.String),
                     sa.column('detail', sa.JSON))
    bundle = sa.table('bundle', sa.column('deployment', sa.String), sa.column('kind', sa.String))
    rows = [r for r in bind.execute(sa.select(policy.c.id, policy.c.deployment, policy.c.name,
                                              policy.c.document).order_by(policy.c.id))
            if is_legacy(r.document)]
    if not rows:
        return {}
    from greengate.policy import PolicyError, convert_legacy  # only when there is work

    at = time.time()
    converted: dict[str, list[str]] = {}
    for row in rows:
        try:
            document = convert_legacy(row.document)
        except (PolicyError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"migration 0007: policy {row.name!r} of deployment "
                               f"{row.deployment!r} cannot be converted to a rule set: {exc}; "
                               "fix or delete it, then upgrade again") from None
        bind.execute(policy.update().where(policy.c.id == row.id).values(
            document=document, updated_by=ACTOR, updated_at=at))
        bind.execute(audit.insert().values(
            at=at, actor=ACTOR, action="policy.convert", target=f"{row.deployment}/{row.name}",
            detail={"previous": row.document, "rules": len(document.get("rules", []))}))
        converted.setdefault(row.deployment, []).append(row.name)
    for deployment in converted:
        bind.execute(bundle.delete().where(bundle.c.deployment == deployment,
                                           bundle.c.kind == "policy"))
    return converted


def downgrade() -> None:
    op.drop_table('value_set')
