"""The official EU DCC JSON schemas, one compiled validator per schema version.

The schemas are vendored unmodified in greengate/data/dcc-schema/<version>/
(Apache-2.0, see the LICENSE there); only the self-contained "combined"
schema of each version is kept, so every `$ref` points into the same file
and resolves without a network.

Before compiling, three rewrites that do not change what is accepted but keep
the verification rate (fastjsonschema builds the whole schema as a dict
literal into every exception it raises, and a `oneOf` raises for each branch
that does not match):
* annotations (description, title, examples, $comment, valueset-uri) are dropped;
* local `$ref`s are inlined (no recursion in these schemas);
* the top-level `oneOf` of 1.3.x, "exactly one of v/t/r, with ver, nam and dob",
  is taken out and enforced by content.parse_dcc's structural check, which runs
  first and refuses the same payloads. Any other oneOf stays in the schema.
"""

import copy
import json
import re
from functools import lru_cache
from importlib import resources

import fastjsonschema

from .errors import Rejected

_ANNOTATIONS = {"description", "title", "examples", "$comment", "valueset-uri"}
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_TYPE_ONE_OF = [{"required": ["ver", "nam", "dob", k]} for k in ("v", "t", "r")]

# Format leniency (docs/verification.md): a "date" is a complete date, and a
# time after it is tolerated (SG/4 of the EU test data sends "fr":
# "2022-01-01T00:00:00.000Z" and is valid there); a "date-time" is RFC 3339
# with seconds and offset optional. Whether the date exists is a plausibility
# check with its own sentence (content.check_plausibility).
_DATE = re.compile(r"^\d{4}-\d\d-\d\d(?:[Tt ].*)?\Z", re.S)
_DATE_TIME = re.compile(
    r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:[Zz]|[+-]\d\d(?::?\d\d)?)?\Z")
FORMATS = {"date": _DATE.match, "date-time": _DATE_TIME.match}


def _versions() -> dict[tuple[int, int, int], str]:
    root = resources.files(__package__).joinpath("data/dcc-schema")
    found = {}
    for entry in root.iterdir():
        match = _VERSION.match(entry.name)
        if match and entry.is_dir():
            found[tuple(int(p) for p in match.groups())] = entry.name
    return dict(sorted(found.items()))


KNOWN = _versions()


def resolve_version(ver: str) -> str:
    """The schema version to validate `ver` against: the nearest known one at or
    below it within the same major version (a minor or patch the kiosk does not
    know yet is read with the rules it does know; a new major is refused)."""
    if type(ver) is str:
        return _resolve(ver)
    return _resolve.__wrapped__(ver)


@lru_cache(maxsize=64)  # a handful of versions in the field; a bounded cache for the rest
def _resolve(ver: str) -> str:
    match = _VERSION.match(ver) if isinstance(ver, str) else None
    if not match:
        raise Rejected("invalid_content", f"'ver' {str(ver)[:20]!r} is not a schema version x.y.z")
    wanted = tuple(int(p) for p in match.groups())
    below = [v for v in KNOWN if v <= wanted and v[0] == wanted[0]]
    if not below:
        known = ", ".join(KNOWN.values())
        raise Rejected("invalid_content", f"schema version {ver} is not supported (known: {known})")
    return KNOWN[max(below)]


def _load(version: str) -> dict:
    folder = resources.files(__package__).joinpath(f"data/dcc-schema/{version}")
    files = [f for f in folder.iterdir() if f.name.endswith("combined-schema.json")]
    if len(files) != 1:
        raise RuntimeError(f"data/dcc-schema/{version} must hold one *.combined-schema.json")
    return json.loads(files[0].read_text(encoding="utf-8"))


def _pointer(root: dict, ref: str):
    if not ref.startswith("#/"):
        # the combined schemas refer only to themselves; anything else would need a network
        raise RuntimeError(f"schema $ref {ref!r} is not local")
    node = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def prepare(schema: dict) -> dict:
    """The rewrites described in the module docstring, on a copy."""
    root = copy.deepcopy(schema)

    def walk(node, depth=0):
        if depth > 32:
            raise RuntimeError("schema $refs nest too deep (recursive?)")
        if isinstance(node, list):
            return [walk(n, depth + 1) for n in node]
        if not isinstance(node, dict):
            return node
        out = {}
        if "$ref" in node:
            out.update(walk(_pointer(root, node["$ref"]), depth + 1))
        for key, value in node.items():
            if key in _ANNOTATIONS or key in ("$ref", "$defs", "$id", "$schema"):
                continue
            if key in ("properties", "$defs"):
                out[key] = {k: walk(v, depth + 1) for k, v in value.items()}
            elif key in out:
                # a validation keyword beside a $ref: both apply (draft 2020-12)
                out = {"allOf": [out, {key: walk(value, depth + 1)}]}
            else:
                out[key] = walk(value, depth + 1)
        return out

    prepared = walk(root)
    if prepared.get("oneOf") == _TYPE_ONE_OF:
        del prepared["oneOf"]
        prepared.setdefault("required", ["ver", "nam", "dob"])
    return prepared


@lru_cache(maxsize=None)
def validator(version: str):
    """Compiled once per schema version, on first use."""
    return fastjsonschema.compile(prepare(_load(version)), formats=FORMATS,
                                  detailed_exceptions=False)


@lru_cache(maxsize=None)
def _explaining_validator(version: str):
    """The same schema compiled with full messages (missing property names and
    so on): slower, so used only to explain a payload already refused."""
    return fastjsonschema.compile(prepare(_load(version)), formats=FORMATS)


def _sentence(dcc: dict, version: str) -> str:
    try:
        _explaining_validator(version)(dcc)
    except fastjsonschema.JsonSchemaValueException as exc:
        name = exc.name or "data"
        field = name[5:] if name.startswith("data.") else "payload"
        message = exc.message[len(name):].strip() if exc.message.startswith(name) else exc.message
        return f"'{field}' {message} (DCC schema {version})"
    return f"payload does not match DCC schema {version}"


def validate(dcc: dict) -> str:
    """Validate a DCC payload against the schema of the version it declares;
    returns the schema version used, or raises Rejected (invalid_content)."""
    version = resolve_version(dcc.get("ver"))
    try:
        validator(version)(dcc)
    except fastjsonschema.JsonSchemaValueException:
        raise Rejected("invalid_content", _sentence(dcc, version)) from None
    return version
