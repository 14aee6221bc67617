"""The EU DCC value sets: the code lists CertLogic rules receive as `external.valueSets`.

A value-set document is the EU's JSON format: {"valueSetId", "valueSetDate",
"valueSetValues": {code: {"display", "lang", "active", ...}}}. The copy
vendored in greengate/data/dcc-valuesets/ (Apache-2.0) is the default; the
fleet distributes newer ones as a signed bundle.

A deployment chooses per field whether a code missing from its value set is
invalid content (`strict_fields`, checked by the verifier after the schema)
or only a policy matter (the default: the schema itself does not restrict
codes, and a rule set may accept a product the lists do not know yet).
"""

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import Rejected

# DCC field -> the value set its codes come from (EU value sets, section 2)
FIELD_VALUE_SETS = {
    "v.tg": "disease-agent-targeted",
    "v.vp": "sct-vaccines-covid-19",
    "v.mp": "vaccines-covid-19-names",
    "v.ma": "vaccines-covid-19-auth-holders",
    "v.co": "country-2-codes",
    "t.tg": "disease-agent-targeted",
    "t.tt": "covid-19-lab-test-type",
    "t.ma": "covid-19-lab-test-manufacturer-and-name",
    "t.tr": "covid-19-lab-result",
    "t.co": "country-2-codes",
    "r.tg": "disease-agent-targeted",
    "r.co": "country-2-codes",
}


class ValueSetError(ValueError):
    pass


def parse_document(doc) -> tuple[str, str, frozenset[str]]:
    """(valueSetId, valueSetDate, codes) of one EU value-set document, or ValueSetError."""
    if not isinstance(doc, Mapping):
        raise ValueSetError("a value set is a JSON object")
    vs_id = doc.get("valueSetId")
    if not isinstance(vs_id, str) or not vs_id:
        raise ValueSetError("value set has no 'valueSetId' text")
    vs_date = doc.get("valueSetDate", "")
    if not isinstance(vs_date, str):
        raise ValueSetError(f"value set {vs_id}: 'valueSetDate' is not text")
    values = doc.get("valueSetValues")
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise ValueSetError(f"value set {vs_id}: 'valueSetValues' must map codes to descriptions")
    return vs_id, vs_date, frozenset(values)


class ValueSets:
    def __init__(self, sets: Mapping[str, Iterable[str]], *, dates: Mapping[str, str] | None = None,
                 strict_fields: Iterable[str] = ()):
        self._codes = {k: frozenset(v) for k, v in sets.items()}
        self.dates = dict(dates or {})
        strict = frozenset(strict_fields)
        unknown = strict - set(FIELD_VALUE_SETS)
        if unknown:
            raise ValueSetError(f"strict field(s) {', '.join(sorted(unknown))} unknown "
                                f"(known: {', '.join(FIELD_VALUE_SETS)})")
        missing = {FIELD_VALUE_SETS[f] for f in strict} - set(self._codes)
        if missing:
            raise ValueSetError(f"strict field(s) need value set(s) {', '.join(sorted(missing))}")
        self.strict_fields = strict
        # per certificate type: (field, codes) to check, resolved once
        self._strict = {t: tuple((f[2:], self._codes[FIELD_VALUE_SETS[f]])
                                 for f in sorted(strict) if f[0] == t) for t in "vtr"}
        # built once: every verification hands the same lists to the rules
        self._external = {k: sorted(v) for k, v in self._codes.items()}

    @classmethod
    def from_documents(cls, docs: Iterable, **options) -> "ValueSets":
        sets, dates = {}, {}
        for doc in docs:
            vs_id, vs_date, codes = parse_document(doc)
            if vs_id in sets:
                raise ValueSetError(f"value set {vs_id} is given twice")
            sets[vs_id], dates[vs_id] = codes, vs_date
        return cls(sets, dates=dates, **options)

    @classmethod
    def load(cls, directory: str | Path, **options) -> "ValueSets":
        """Every *.json file of a folder, each one EU value-set document."""
        docs = []
        for path in sorted(Path(directory).glob("*.json")):
            try:
                docs.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueSetError(f"{path.name}: {exc}") from None
        if not docs:
            raise ValueSetError(f"{directory}: no value-set files (*.json)")
        return cls.from_documents(docs, **options)

    @classmethod
    def default(cls, **options) -> "ValueSets":
        """The copy vendored with GreenGate."""
        if not options:
            return _vendored()
        return cls(_vendored()._codes, dates=_vendored().dates, **options)

    def ids(self) -> list[str]:
        return sorted(self._codes)

    def codes(self, value_set_id: str) -> frozenset[str]:
        return self._codes.get(value_set_id, frozenset())

    def as_external(self) -> dict[str, list[str]]:
        """{id: [codes]} for CertLogic's external.valueSets (shared: do not modify)."""
        return self._external

    def check_strict(self, cert) -> None:
        """Raises Rejected (invalid_content) when a strict field holds an unknown code."""
        for field, codes in self._strict[cert.type]:
            value = cert.entry.get(field)
            if value is not None and value not in codes:
                raise Rejected("invalid_content",
                               f"'{cert.type}.{field}' code {str(value)[:40]!r} is not in the value set "
                               f"{FIELD_VALUE_SETS[cert.type + '.' + field]}")


@lru_cache(maxsize=1)
def _vendored() -> ValueSets:
    folder = resources.files(__package__).joinpath("data/dcc-valuesets")
    docs = [json.loads(f.read_text(encoding="utf-8"))
            for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".json")]
    return ValueSets.from_documents(docs)
