"""Checkpoint policies: sets of CertLogic business rules in the EU rule format.

A policy answers only for certificates that are already technically valid;
what it refuses is `policy_failed`, with the failing rule's Identifier as the
sub-reason and its English Description as the detail. Rules are data, never
code, so the fleet can tighten them at once (seed 002) and a deployment can
load a country's published set (docs/verification.md#policies).

A rule is evaluated, as the EU verifier apps do, on
`{"payload": <DCC>, "external": {"validationClock", "valueSets", "countryCode",
"exp", "iat", "issuerCountryCode", "kid"}}`, plus one GreenGate extension,
`external.validationDate`: the validation time's calendar date in the policy's
timezone, for rules that count whole local days (the built-in hcmc-2021).

The old JSON format (accept / vaccination / recovery / test thresholds) is still
read: `convert_legacy` turns it into the equivalent rule set.
"""

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import certlogic
from .content import Certificate, parse_date, parse_datetime

BUILTIN = ("hcmc-2021", "accept-valid")
TEST_DETECTED = "260373001"
TEST_NOT_DETECTED = "260415000"

CERTIFICATE_TYPES = {"General": None, "Vaccination": "v", "Test": "t", "Recovery": "r"}
RULE_TYPES = ("Acceptance", "Invalidation")
RULE_FIELDS = ("Identifier", "Type", "Country", "Version", "SchemaVersion", "Engine",
               "EngineVersion", "CertificateType", "Description", "ValidFrom", "ValidTo",
               "AffectedFields", "Logic")
DOCUMENT_FIELDS = ("name", "title", "timezone", "rules", "description")
LANGUAGE = "en"  # of Decision.detail; the others are in Policy.descriptions


class PolicyError(ValueError):
    pass


def _version_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


@dataclass(frozen=True)
class Rule:
    identifier: str
    type: str  # "Acceptance" | "Invalidation"
    country: str
    version: str
    certificate_type: str  # a key of CERTIFICATE_TYPES
    descriptions: dict[str, str]  # language -> sentence
    valid_from: datetime
    valid_to: datetime
    affected_fields: tuple[str, ...]
    logic: object = field(repr=False)
    document: dict = field(repr=False, compare=False)
    # the Logic compiled once, when the rule is loaded (a scan only runs it)
    compiled: certlogic.Compiled | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.compiled is None:
            object.__setattr__(self, "compiled", certlogic.compile_logic(self.logic))

    def applies_to(self, cert_type: str) -> bool:
        wanted = CERTIFICATE_TYPES[self.certificate_type]
        return wanted is None or wanted == cert_type

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at <= self.valid_to

    def description(self, language: str = LANGUAGE) -> str:
        return self.descriptions.get(language) or next(iter(self.descriptions.values()))


@dataclass(frozen=True)
class Policy:
    name: str
    title: str
    timezone: ZoneInfo
    rules: tuple[Rule, ...]
    document: dict  # the rule-set document (a legacy document is converted)
    # rules by certificate type, so a scan looks only at those that can apply
    _by_type: dict = field(init=False, repr=False, compare=False)
    # the `external` keys the rules read (None: some rule may read all of it)
    external_keys: frozenset | None = field(init=False, repr=False, compare=False)
    _selection: "_Selection" = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_type", {
            t: tuple(r for r in self.rules if r.applies_to(t)) for t in ("v", "t", "r")})
        object.__setattr__(self, "external_keys", _external_keys(self.rules))
        object.__setattr__(self, "_selection", _Selection(self))

    def evaluate(self, cert: Certificate, at: datetime,
                 external: dict | None = None) -> tuple[str, str] | None:
        """None if the checkpoint lets the holder pass, else (rule identifier, detail)."""
        if not self._by_type.get(cert.type):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        local = at.astimezone(self.timezone)
        external = dict(external) if external else {}
        if "validationClock" not in external:
            keys = self.external_keys
            if keys is None or "validationClock" in keys:
                external["validationClock"] = local.isoformat()
        external["validationDate"] = local.date().isoformat()
        payload = _payload(cert)
        data = {"payload": payload, "external": external}
        for rule in self._selection.rules(cert.type, at, external.get("issuerCountryCode")):
            try:
                value = rule.compiled(data)
                problem = None if value is True else ""
            except certlogic.CertLogicError as exc:
                problem = f"; the rule could not be evaluated: {exc}"
            if problem is not None:
                facts = _facts(rule.affected_fields, payload, local.date(), at)
                return rule.identifier, f"{rule.description()}{facts}{problem}"
        return None

    @staticmethod
    def applicable(rules, at: datetime, issuer_country: str | None) -> list[Rule]:
        """Rules in force at `at`, the newest Version of each Identifier, in document order.

        Acceptance rules all apply (the deployment chose the set); an Invalidation
        rule only to certificates of its Country, as the EU apps apply the issuer's.
        """
        chosen: dict[str, Rule] = {}
        for rule in rules:
            if not rule.in_force(at):
                continue
            if rule.type == "Invalidation" and rule.country != issuer_country:
                continue
            held = chosen.get(rule.identifier)
            if held is None or _version_key(rule.version) > _version_key(held.version):
                chosen[rule.identifier] = rule
        return list(chosen.values())

    def descriptions(self, identifier: str) -> dict[str, str]:
        """A rule's Description per language ({} for an identifier it does not have)."""
        for rule in self.rules:
            if rule.identifier == identifier:
                return dict(rule.descriptions)
        return {}


class _Selection:
    """`Policy.applicable` for one certificate type and issuer country, reused while the
    validation time stays between the same ValidFrom/ValidTo boundaries (which rules
    are in force changes only there): a kiosk scans for days under one selection."""

    _EPOCH = datetime.min.replace(tzinfo=timezone.utc)
    _END = datetime.max.replace(tzinfo=timezone.utc)

    def __init__(self, policy: "Policy"):
        self._by_type = policy._by_type
        # a rule is in force on [ValidFrom, ValidTo]; the next instant the set
        # can change after ValidTo is a microsecond later (datetime's resolution)
        self._breaks = sorted({r.valid_from for r in policy.rules}
                              | {r.valid_to + timedelta(microseconds=1) for r in policy.rules
                                 if r.valid_to < self._END})
        # an Invalidation rule applies by issuer country; without any, the country
        # does not change the selection
        self._by_country = any(r.type == "Invalidation" for r in policy.rules)
        self._window = (self._END, self._EPOCH, {})  # empty: the first scan fills it

    def rules(self, cert_type: str, at: datetime, issuer_country: str | None) -> list[Rule]:
        start, end, chosen = self._window
        if not start <= at < end:
            i = bisect_right(self._breaks, at)
            start = self._breaks[i - 1] if i else self._EPOCH
            end = self._breaks[i] if i < len(self._breaks) else self._END
            chosen = {}
            self._window = (start, end, chosen)  # one assignment: safe to share across threads
        key = (cert_type, issuer_country if self._by_country else None)
        rules = chosen.get(key)
        if rules is None:
            if len(chosen) > 64:  # issuer countries come from certificates: keep it bounded
                chosen.clear()
            rules = chosen[key] = Policy.applicable(self._by_type.get(cert_type, ()), at,
                                                    issuer_country)
        return rules


def _external_keys(rules) -> frozenset | None:
    """The `external.<key>`s the rules' Logic reads, found from their `var` paths
    (CertLogic paths are literals). None when a rule may read all of `external`: a
    path "", "external" or, inside a reduce, "data" or "data.external"."""
    keys = {"issuerCountryCode"}  # read by the selection of Invalidation rules
    for rule in rules:
        for path in rule.compiled.vars:
            parts = path.split(".") if path else [""]
            while parts[0] == "data" and len(parts) > 1:  # a reduce lambda's outer data
                parts = parts[1:]
            if parts[0] in ("", "data") or parts == ["external"]:
                return None
            if parts[0] == "external":
                keys.add(parts[1])
    return frozenset(keys)


def _payload(cert: Certificate):
    payload = getattr(cert, "payload", None)
    if payload is not None:
        return payload
    # a Certificate without the decoded payload (older callers): the parts rules read
    return {"ver": "1.3.0", "dob": cert.dob, "nam": {"fnt": cert.family, "gnt": cert.given},
            cert.type: [dict(cert.entry)]}


_DAY_FIELDS = {"dt": "last dose", "fr": "first positive test", "df": "valid from",
               "du": "valid until"}


def _facts(fields, payload, today: date, at: datetime) -> str:
    """What the failing rule looked at, in counts rather than the holder's dates
    (a detail travels to the fleet)."""
    values = {}
    for path in fields:
        node = payload
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.get(part)
            else:
                node = None
        values[path.rsplit(".", 1)[-1]] = node
    facts = []
    dn, sd = values.get("dn"), values.get("sd")
    if type(dn) is int:
        facts.append(f"dose {dn} of {sd}" if type(sd) is int else f"dose {dn}")
    for name, label in _DAY_FIELDS.items():
        value = values.get(name)
        try:
            days = (today - parse_date(value)).days
        except (TypeError, ValueError):
            continue
        facts.append(f"{label} {days} days ago" if days >= 0 else
                     f"{label} in {-days} days")
    sc = values.get("sc")
    try:
        hours = (at - (sc if isinstance(sc, datetime) else parse_datetime(sc))).total_seconds()
        hours /= 3600
        facts.append(f"sample taken {hours:.0f} h ago" if hours >= 0 else
                     f"sample time {-hours:.0f} h after the validation time")
    except (TypeError, ValueError, AttributeError):
        pass
    return f" ({', '.join(facts)})" if facts else ""


# -- rule-set documents ---------------------------------------------------------------

def _moment(value, where: str) -> datetime:
    if not isinstance(value, str):
        raise PolicyError(f"{where} must be an ISO 8601 date-time text")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError(f"{where} {value[:40]!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_rule(rule, position: int | None = None) -> Rule:
    """One rule in the EU format, checked; PolicyError names the rule's Identifier."""
    if not isinstance(rule, dict):
        raise PolicyError(f"rule #{position}: a rule is a JSON object" if position is not None
                          else "a rule is a JSON object")
    identifier = rule.get("Identifier")
    if not isinstance(identifier, str) or not identifier.strip() or len(identifier) > 64:
        where = f"rule #{position}" if position is not None else "rule"
        raise PolicyError(f"{where}: 'Identifier' must be a non-empty text of at most 64 "
                          "characters")
    name = f"rule {identifier!r}"
    unknown = sorted(set(rule) - set(RULE_FIELDS))
    if unknown:
        raise PolicyError(f"{name}: field {unknown[0]!r} is unknown (known: "
                          f"{', '.join(RULE_FIELDS)})")
    missing = [f for f in RULE_FIELDS if f not in rule]
    if missing:
        raise PolicyError(f"{name}: field {missing[0]!r} is missing")
    for key in ("Type", "Country", "Version", "SchemaVersion", "Engine", "EngineVersion",
                "CertificateType"):
        if not isinstance(rule[key], str):
            raise PolicyError(f"{name}: '{key}' must be text")
    if rule["Type"] not in RULE_TYPES:
        raise PolicyError(f"{name}: 'Type' must be one of {', '.join(RULE_TYPES)}")
    if rule["Engine"] != "CERTLOGIC":
        raise PolicyError(f"{name}: 'Engine' {rule['Engine'][:20]!r} is not CERTLOGIC")
    if rule["CertificateType"] not in CERTIFICATE_TYPES:
        raise PolicyError(f"{name}: 'CertificateType' must be one of "
                          f"{', '.join(CERTIFICATE_TYPES)}")
    descriptions = {}
    if not isinstance(rule["Description"], list) or not rule["Description"]:
        raise PolicyError(f"{name}: 'Description' must list {{\"lang\", \"desc\"}} objects")
    for item in rule["Description"]:
        if not (isinstance(item, dict) and isinstance(item.get("lang"), str)
                and isinstance(item.get("desc"), str)):
            raise PolicyError(f"{name}: each 'Description' is {{\"lang\": ..., \"desc\": ...}}")
        descriptions[item["lang"].lower()] = item["desc"]
    fields = rule["AffectedFields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise PolicyError(f"{name}: 'AffectedFields' must be a list of texts")
    valid_from = _moment(rule["ValidFrom"], f"{name}: 'ValidFrom'")
    valid_to = _moment(rule["ValidTo"], f"{name}: 'ValidTo'")
    if valid_to < valid_from:
        raise PolicyError(f"{name}: 'ValidTo' is before 'ValidFrom'")
    try:
        compiled = certlogic.compile_logic(rule["Logic"])
    except certlogic.CertLogicError as exc:
        raise PolicyError(f"{name}: 'Logic' is not valid CertLogic: {exc}") from None
    return Rule(identifier, rule["Type"], rule["Country"], rule["Version"],
                rule["CertificateType"], descriptions, valid_from, valid_to, tuple(fields),
                rule["Logic"], rule, compiled)


def is_legacy(doc) -> bool:
    """A policy in the old JSON format (before rule sets)."""
    return isinstance(doc, dict) and "rules" not in doc


def from_document(doc: dict) -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError("a policy is a JSON object")
    if is_legacy(doc):
        doc = convert_legacy(doc)
    unknown = sorted(set(doc) - set(DOCUMENT_FIELDS))
    if unknown:
        raise PolicyError(f"policy field {unknown[0]!r} is unknown "
                          f"(known: {', '.join(DOCUMENT_FIELDS)})")
    name = _get(doc, "name", str)
    title = _get(doc, "title", str, "")
    tz = _zone(_get(doc, "timezone", str, "UTC"))
    items = doc["rules"]
    if not isinstance(items, list):
        raise PolicyError("policy field 'rules' must be a list of rules")
    rules = tuple(parse_rule(item, n) for n, item in enumerate(items, 1))
    seen = set()
    for rule in rules:
        key = (rule.identifier, rule.version, rule.certificate_type)
        if key in seen:
            raise PolicyError(f"rule {rule.identifier!r} version {rule.version} is in the "
                              "policy twice")
        seen.add(key)
    return Policy(name=name, title=title, timezone=tz, rules=rules, document=doc)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(f"policy timezone {name!r} is unknown") from None


def load(name_or_path: str | Path) -> Policy:
    """A built-in policy by name, or a JSON policy file."""
    if str(name_or_path) in BUILTIN:
        text = resources.files(__package__).joinpath(f"policies/{name_or_path}.json").read_text()
        source = f"built-in policy {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise PolicyError(f"no policy named {name_or_path!r} (built-in: {', '.join(BUILTIN)}) "
                              "and no such file")
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{source}: not UTF-8 text (is this a policy JSON file?)") from None
        except OSError as exc:
            raise PolicyError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise PolicyError(f"{source}: JSON nests too deeply") from None
    try:
        return from_document(doc)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


# -- the old format -------------------------------------------------------------------

_KNOWN = {
    "": {"name", "title", "timezone", "accept", "vaccination", "recovery", "test", "description"},
    "vaccination": {"min_dose_number", "min_days_after_dose", "require_complete_series"},
    "recovery": {"min_days_since_positive", "max_days_since_positive"},
    "test": {"max_hours", "accept_positive"},
}
LEGACY_VALID_FROM = "2020-01-01T00:00:00Z"  # before any DCC was issued
LEGACY_VALID_TO = "2099-12-31T23:59:59Z"
_KINDS = {"v": ("vaccination", "tiêm chủng"), "t": ("test", "xét nghiệm"),
          "r": ("recovery", "khỏi bệnh")}


def _check_keys(doc: dict) -> None:
    """Unknown keys are refused: a typo must not silently mean 'no limit'."""
    for section, known in _KNOWN.items():
        node = doc if not section else doc.get(section)
        if node is None:
            continue
        if not isinstance(node, dict):
            raise PolicyError(f"policy field '{section}' must be an object, got {node!r}")
        for key in node:
            if key not in known:
                where = f"{section}.{key}" if section else key
                raise PolicyError(f"policy field '{where}' is unknown "
                                  f"(known: {', '.join(sorted(known))})")


def _get(doc: dict, path: str, kind, default=...):
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise PolicyError(f"policy field '{path}' is missing")
            return default
        node = node[part]
    if node is None and default is None:
        return None
    if kind is float and type(node) is int:
        node = float(node)
    if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
        raise PolicyError(f"policy field '{path}' must be {kind.__name__}, got {node!r}")
    return node


def _rule(identifier: str, certificate_type: str, fields: list[str], logic,
          en: str, vi: str) -> dict:
    return {
        "Identifier": identifier, "Type": "Acceptance", "Country": "VN", "Version": "1.0.0",
        "SchemaVersion": "1.3.0", "Engine": "CERTLOGIC",
        "EngineVersion": certlogic.SPEC_VERSION, "CertificateType": certificate_type,
        "Description": [{"lang": "en", "desc": en}, {"lang": "vi", "desc": vi}],
        "ValidFrom": LEGACY_VALID_FROM, "ValidTo": LEGACY_VALID_TO,
        "AffectedFields": fields, "Logic": logic,
    }


def _var(path: str) -> dict:
    return {"var": path}


def _date(path: str, days: int = 0) -> dict:
    return {"plusTime": [_var(path), days, "day"]}


TODAY = _date("external.validationDate")  # midnight of the local validation date
NOW = {"plusTime": [_var("external.validationClock"), 0, "hour"]}


def convert_legacy(doc: dict) -> dict:
    """An old-format policy document as the equivalent rule set (same boundaries,
    same sub-reasons), plus the recovery certificate's own df..du window, which
    the old format ignored (issue 13). PolicyError names a bad field."""
    if not isinstance(doc, dict):
        raise PolicyError("a policy is a JSON object")
    _check_keys(doc)
    name = _get(doc, "name", str)
    title = _get(doc, "title", str, "")
    zone = _get(doc, "timezone", str, "UTC")
    _zone(zone)
    accept = _get(doc, "accept", list)
    if not accept or any(t not in ("v", "t", "r") for t in accept):
        raise PolicyError("policy field 'accept' must list some of 'v', 't', 'r'")
    max_hours = _get(doc, "test.max_hours", dict, None)
    if max_hours is not None:
        for key, value in max_hours.items():
            if type(value) not in (int, float) or value <= 0:
                raise PolicyError(f"policy field 'test.max_hours.{key}' must be a positive number")
            if value != int(value):
                raise PolicyError(f"policy field 'test.max_hours.{key}' must be a whole number "
                                  "of hours (CertLogic adds whole hours)")
        max_hours = {k: int(v) for k, v in max_hours.items()}
    numbers = {}
    for path in ("vaccination.min_dose_number", "vaccination.min_days_after_dose",
                 "recovery.min_days_since_positive"):
        numbers[path] = _get(doc, path, int, 0)
        if numbers[path] < 0:
            raise PolicyError(f"policy field '{path}' must not be negative")
    max_days = _get(doc, "recovery.max_days_since_positive", int, None)
    complete = _get(doc, "vaccination.require_complete_series", bool, False)
    accept_positive = _get(doc, "test.accept_positive", bool, False)

    rules = []
    refused = [t for t in ("v", "t", "r") if t not in accept]
    if refused:
        checks = [{"!": [_var(f"payload.{t}.0")]} for t in refused]
        en = " and ".join(_KINDS[t][0] for t in accept)
        vi = " và ".join(_KINDS[t][1] for t in accept)
        rules.append(_rule(
            "type_not_accepted", "General", refused,
            checks[0] if len(checks) == 1 else {"and": checks},
            f"Only {en} certificates are accepted here",
            f"Chỉ chấp nhận chứng nhận {vi} tại đây"))
    if "v" in accept:
        min_dose = numbers["vaccination.min_dose_number"]
        dn = _var("payload.v.0.dn")
        dose_checks = [{">=": [dn, min_dose]}] if min_dose > 1 else []
        if complete:
            dose_checks.append({">=": [dn, _var("payload.v.0.sd")]})
        if dose_checks:
            what_en = [f"at least dose {min_dose}"] if min_dose > 1 else []
            what_vi = [f"ít nhất mũi {min_dose}"] if min_dose > 1 else []
            if complete:
                what_en.append("the complete series")
                what_vi.append("đủ liệu trình")
            rules.append(_rule(
                "incomplete_vaccination", "Vaccination", ["v.0.dn", "v.0.sd"],
                dose_checks[0] if len(dose_checks) == 1 else {"and": dose_checks},
                f"Vaccination needs {' and '.join(what_en)}",
                f"Cần tiêm {' và '.join(what_vi)}"))
        days = numbers["vaccination.min_days_after_dose"]
        rules.append(_rule(
            "vaccination_too_recent", "Vaccination", ["v.0.dt"],
            {"not-before": [TODAY, _date("payload.v.0.dt", days)]},
            f"The last dose must be at least {days} days before the validation date",
            f"Mũi tiêm cuối phải cách ngày kiểm tra ít nhất {days} ngày"))
    if "r" in accept:
        rules.extend(recovery_window_rules())
        days = numbers["recovery.min_days_since_positive"]
        rules.append(_rule(
            "recovery_too_recent", "Recovery", ["r.0.fr"],
            {"not-before": [TODAY, _date("payload.r.0.fr", days)]},
            f"The first positive test must be at least {days} days before the validation date",
            f"Lần xét nghiệm dương tính đầu tiên phải cách ngày kiểm tra ít nhất {days} ngày"))
        if max_days is not None:
            rules.append(_rule(
                "recovery_expired", "Recovery", ["r.0.fr"],
                {"before": [TODAY, _date("payload.r.0.fr", max_days)]},
                f"The first positive test must be fewer than {max_days} days before the "
                "validation date",
                f"Lần xét nghiệm dương tính đầu tiên phải cách ngày kiểm tra dưới {max_days} "
                "ngày"))
    if "t" in accept:
        rules.extend(_test_rules(accept_positive, max_hours))
    return {"name": name, "title": title, "timezone": zone, "rules": rules}


def recovery_window_rules() -> list[dict]:
    """df <= validation date <= du, in local dates as every day limit here."""
    return [
        _rule("recovery_not_yet_valid", "Recovery", ["r.0.df"],
              {"not-before": [TODAY, _date("payload.r.0.df")]},
              "The recovery certificate is not valid yet (its valid-from date is after the "
              "validation date)",
              "Chứng nhận khỏi bệnh chưa có hiệu lực (ngày bắt đầu hiệu lực sau ngày kiểm tra)"),
        _rule("recovery_certificate_expired", "Recovery", ["r.0.du"],
              {"not-after": [TODAY, _date("payload.r.0.du")]},
              "The recovery certificate's validity has ended (its valid-until date is before "
              "the validation date)",
              "Chứng nhận khỏi bệnh đã hết hiệu lực (ngày hết hiệu lực trước ngày kiểm tra)"),
    ]


def _test_rules(accept_positive: bool, max_hours: dict[str, int] | None) -> list[dict]:
    tr, tt = _var("payload.t.0.tr"), _var("payload.t.0.tt")
    sampled = _var("payload.t.0.sc")
    rules = []
    if not accept_positive:
        rules.append(_rule(
            "test_positive", "Test", ["t.0.tr"], {"!": [{"===": [tr, TEST_DETECTED]}]},
            "The test result is positive", "Kết quả xét nghiệm dương tính"))
    rules.append(_rule(
        "test_result_unknown", "Test", ["t.0.tr"], {"in": [tr, [TEST_DETECTED, TEST_NOT_DETECTED]]},
        "The test result code is unknown", "Mã kết quả xét nghiệm không xác định"))
    rules.append(_rule(
        "test_in_future", "Test", ["t.0.sc"],
        {"not-before": [NOW, {"plusTime": [sampled, 0, "hour"]}]},
        "The sample time is after the validation time",
        "Thời điểm lấy mẫu sau thời điểm kiểm tra"))
    if max_hours is not None:
        types = sorted(max_hours)
        rules.append(_rule(
            "test_type_not_accepted", "Test", ["t.0.tt"], {"in": [tt, types]},
            f"Only these test types are accepted: {', '.join(types) or 'none'}",
            f"Chỉ chấp nhận các loại xét nghiệm: {', '.join(types) or 'không có'}"))
        logic = True
        for kind in reversed(types):
            within = {"not-after": [NOW, {"plusTime": [sampled, max_hours[kind], "hour"]}]}
            logic = {"if": [{"===": [tt, kind]}, within, logic]}
        limits_en = ", ".join(f"limit {max_hours[k]} h for {k}" for k in types)
        limits_vi = ", ".join(f"tối đa {max_hours[k]} giờ với {k}" for k in types)
        if types:
            rules.append(_rule(
                "test_too_old", "Test", ["t.0.sc", "t.0.tt"], logic,
                f"The test sample is too old ({limits_en})",
                f"Mẫu xét nghiệm đã quá hạn ({limits_vi})"))
    return rules
