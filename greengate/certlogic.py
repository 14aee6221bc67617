"""CertLogic, the EU's business-rule language (spec 1.3.3, ../shared/certlogic/README.md).

Our own evaluator rather than `panzi-json-logic` (the issue's suggestion): that
library lacks `dccDateOfBirth` and partial dates (207 of the suite's 232
assertions), validates nothing, and follows JsonLogic's coercions where CertLogic
demands an error (e.g. `"1" < 2`). CertLogic is small enough to follow the spec
exactly here.

Evaluation is total: any expression and data give a value or a `CertLogicError`,
never another exception. Expressions are validated (and their depth and size
bounded) before evaluation, and evaluation has a step budget, so a hostile line
on `greengate-kiosk rules --batch` or in a rule set cannot stall a kiosk.

Date-times are `datetime` objects in UTC with millisecond precision, as the
spec's JavaScript `Date` semantics give; `to_json` renders them as
`2021-06-01T00:00:00.000Z`.
"""

import operator as operator_module
import re
from calendar import monthrange
from functools import lru_cache
from datetime import date, datetime, timedelta, timezone

SPEC_VERSION = "1.3.3"
MAX_DEPTH = 64  # EU published rules nest < 20 levels; Python recursion stays far from its limit
MAX_NODES = 20_000  # nodes of one expression
MAX_STEPS = 250_000  # evaluation steps (operations, reduce items, compared items) per evaluate()
MAX_RESULT_NODES = 100_000  # nodes of a result rendered by to_json

TIME_UNITS = ("year", "month", "day", "hour")
COMPARISONS = ("<", ">", "<=", ">=")
DATE_COMPARISONS = ("after", "before", "not-after", "not-before")
# operator -> (min operands, max operands)
ARITY = {
    "if": (3, 3), "===": (2, 2), "in": (2, 2), "+": (2, 2), "and": (2, None),
    **{op: (2, 3) for op in COMPARISONS + DATE_COMPARISONS},
    "!": (1, 1), "plusTime": (3, 3), "reduce": (3, 3), "extractFromUVCI": (2, 2),
    "dccDateOfBirth": (1, 1),
}
OPERATIONS = ("var",) + tuple(ARITY)

_UTC = timezone.utc
_DATE_TIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{1,2}(?::?\d{2})?)?)?)?)?$")
_UVCI_SEPARATORS = re.compile(r"[/#:]")


class CertLogicError(ValueError):
    """An invalid expression, or one that cannot be evaluated on the given data."""


# -- values ---------------------------------------------------------------------------

def _is_int(value) -> bool:
    # JSON (and JavaScript) cannot tell 2.0 from 2: an integral float is an integer
    t = type(value)
    return t is int or (t is float and value.is_integer())


def is_truthy(value) -> bool:
    if value is True:
        return True
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return _is_int(value) and value != 0


def is_falsy(value) -> bool:
    if value is False or value is None:
        return True
    if isinstance(value, (str, list, dict)):
        return len(value) == 0
    return _is_int(value) and value == 0


def _describe(value) -> str:
    if isinstance(value, datetime):
        return f"the date-time {format_datetime(value)}"
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text[:40]}{'…' if len(text) > 40 else ''}"


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(_UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Cached: a kiosk sees the same validation date and the same dose dates over and over,
# and parsing is most of a rule's cost. datetimes are immutable, so sharing is safe.
@lru_cache(maxsize=4096)
def parse_datetime(text: str) -> datetime:
    """A date(-time) in one of the spec's formats, as a UTC instant in milliseconds.

    Partial dates read as `dccDateOfBirth` does (the last day they allow); a
    missing offset is UTC; decimals past the millisecond are dropped.
    """
    match = _DATE_TIME.match(text) if isinstance(text, str) and len(text) <= 64 else None
    if match is None:
        raise CertLogicError(f"{_describe(text)} is not a date or date-time CertLogic accepts")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        year = int(year)
        if month is None:
            month, day = 12, 31
        else:
            month = int(month)
            day = monthrange(year, month)[1] if day is None else int(day)
        if hour is None:
            return datetime(year, month, day, tzinfo=_UTC)
        millis = int((fraction or "0")[:3].ljust(3, "0"))
        zone = _UTC
        if offset and offset != "Z":
            sign = -1 if offset[0] == "-" else 1
            digits = offset[1:].replace(":", "")
            hours, minutes = (digits, "0") if len(digits) <= 2 else (digits[:-2], digits[-2:])
            zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
        local = datetime(year, month, day, int(hour), int(minute), int(second), millis * 1000,
                         tzinfo=zone)
        return local.astimezone(_UTC)
    except (ValueError, OverflowError):  # e.g. 2021-09-99, month 13, offset +25:00
        raise CertLogicError(f"{text[:40]!r} is not a date that exists") from None


@lru_cache(maxsize=4096)
def plus_time(text: str, amount: int, unit: str) -> datetime:
    """JavaScript's setUTC<unit>(getUTC<unit>() + amount): day overflow rolls over
    (2020-02-29 + 1 year = 2021-03-01), no DST, no leap seconds."""
    moment = parse_datetime(text)
    try:
        if unit == "hour":
            return moment + timedelta(hours=amount)
        if unit == "day":
            return moment + timedelta(days=amount)
        months = moment.month - 1 + amount * (12 if unit == "year" else 1)
        year, month = moment.year + months // 12, months % 12 + 1
        first = moment.replace(year=year, month=month, day=1)
        return first + timedelta(days=moment.day - 1)
    except (ValueError, OverflowError):
        raise CertLogicError(f"plusTime: {text[:40]!r} plus {amount} {unit}(s) is out of the "
                             "range of dates") from None


def dcc_date_of_birth(text) -> datetime:
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", text):
        raise CertLogicError(f"dccDateOfBirth: {_describe(text)} is not a date of birth "
                             "YYYY, YYYY-MM or YYYY-MM-DD")
    return parse_datetime(text)


def extract_from_uvci(uvci, index: int):
    if uvci is None:
        return None
    if not isinstance(uvci, str):
        raise CertLogicError(f"extractFromUVCI: the UCI must be a string or null, got "
                             f"{_describe(uvci)}")
    if uvci.startswith("URN:UVCI:"):
        uvci = uvci[len("URN:UVCI:"):]
    fragments = _UVCI_SEPARATORS.split(uvci)
    return fragments[index] if 0 <= index < len(fragments) else None


# -- validation -----------------------------------------------------------------------

def _valid_path(path: str) -> bool:
    return path == "" or all(path.split("."))


def issues(expr) -> list[tuple[object, str]]:
    """Every problem of an expression as (sub-expression, message); [] when valid.

    Messages follow the reference implementation's validator (the suite in
    tests/data/certlogic/validation-testSuite checks them). Iterative, so an
    absurdly deep expression is reported, not a RecursionError.
    """
    found: list[tuple[object, str]] = []
    stack = [(expr, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            found.append((expr, f"expression has more than {MAX_NODES} parts"))
            break
        if depth > MAX_DEPTH:
            found.append((node, f"expression nests deeper than {MAX_DEPTH} levels"))
            continue
        if isinstance(node, bool) or type(node) is int or isinstance(node, str):
            continue
        if type(node) is float:
            if not node.is_integer():
                found.append((node, f"{node} is a non-integer number"))
            continue
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in reversed(node))
            continue
        if not isinstance(node, dict):
            found.append((node, "invalid CertLogic expression"))
            continue
        if len(node) != 1:
            found.append((node, f"expression object must have exactly one key, but it has "
                                f"{len(node)}"))
            continue
        (operator, operands), = node.items()
        if operator == "var":
            if not isinstance(operands, str):
                found.append((node, 'not of the form { "var": "<path>" }'))
            elif not _valid_path(operands):
                found.append((node, f"data access path doesn't have a valid format: {operands}"))
            continue
        if not isinstance(operands, list):
            found.append((node, 'operation not of the form { "<operator>": [ <values...> ] }'))
            continue
        if operator not in ARITY:
            found.append((node, f'unrecognised operator: "{operator}"'))
            continue
        low, high = ARITY[operator]
        if len(operands) < low or (high is not None and len(operands) > high):
            wanted = (f"exactly {low}" if low == high else
                      f"at least {low}" if high is None else f"{low} to {high}")
            found.append((node, f'an operation with operator "{operator}" must have {wanted} '
                                f"operands, it has {len(operands)}"))
            continue
        problem = _literal_operands(operator, operands)
        if problem:
            found.append((node, problem))
            continue
        stack.extend((item, depth + 1) for item in reversed(operands))
    return found


def _literal_operands(operator: str, operands: list) -> str | None:
    """Operands the spec wants as literals, not expressions."""
    if operator == "plusTime":
        if not _is_int(operands[1]) or isinstance(operands[1], bool):
            return '"amount" argument (#2) of "plusTime" must be an integer'
        if operands[2] not in TIME_UNITS:
            return ('"unit" argument (#3) of "plusTime" must be a string with one of the time '
                    f"units: {', '.join(TIME_UNITS)}")
    elif operator == "extractFromUVCI":
        if not _is_int(operands[1]) or isinstance(operands[1], bool):
            return '"index" argument (#2) of "extractFromUVCI" must be an integer'
    return None


def validate(expr) -> None:
    """Raise CertLogicError naming the first problem (and how many more) if invalid."""
    found = issues(expr)
    if found:
        sub, message = found[0]
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" \
            if len(found) > 1 else ""
        where = "" if sub is expr else f" in {_short(sub)}"
        raise CertLogicError(f"{message}{where}{more}")


def _short(expr) -> str:
    """Where a problem is, without printing a sub-expression that may nest thousands deep."""
    if isinstance(expr, dict) and len(expr) == 1:
        return f'the "{next(iter(expr))[:40]}" operation'
    if isinstance(expr, dict):
        return "an object"
    if isinstance(expr, list):
        return "an array"
    return repr(expr)[:40]


# -- evaluation -----------------------------------------------------------------------
#
# An expression is compiled once into a tree of closures, one per node, each
# `run(data, budget) -> value`; a rule set's rules are compiled when the policy is
# loaded, so a scan pays neither the dispatch on operator names nor the walk over
# the JSON. Each closure does what the spec says its operation does, spends the
# step budget as an interpreter would (one step per node evaluated, one per item
# `in` scans or `===` compares) and raises the same sentences.

class _Budget:
    __slots__ = ("left",)

    def __init__(self, steps: int):
        self.left = steps

    def spend(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            _over_budget()


def _over_budget():
    raise CertLogicError(f"evaluation takes more than {MAX_STEPS} steps")


class Compiled:
    """A validated expression, ready to evaluate on any data, any number of times."""
    __slots__ = ("expr", "_run", "vars")

    def __init__(self, expr, run, var_paths: frozenset[str]):
        self.expr = expr
        self._run = run
        self.vars = var_paths  # every `var` path the expression reads (reduce lambdas included)

    def __call__(self, data):
        try:
            return self._run(data, _Budget(MAX_STEPS))
        except CertLogicError:
            raise
        except RecursionError:  # cannot happen within MAX_DEPTH; kept so evaluation stays total
            raise CertLogicError("expression nests too deeply") from None
        except (TypeError, ValueError, OverflowError, KeyError, IndexError, AttributeError) as exc:
            raise CertLogicError(f"cannot evaluate: {type(exc).__name__}: {exc}") from None


def compile_logic(expr, *, validated: bool = False) -> Compiled:
    """`expr` compiled; CertLogicError if it is not valid CertLogic. Pass
    validated=True only for an expression `validate` has accepted."""
    if not validated:
        validate(expr)
    paths: set[str] = set()
    try:
        run = _compile(expr, paths)
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
        # only an expression passed as validated that was not: stay total all the same
        raise CertLogicError(f"invalid CertLogic expression: {type(exc).__name__}") from None
    return Compiled(expr, run, frozenset(paths))


def evaluate(expr, data, *, validated: bool = False):
    """The value of `expr` on `data`, or CertLogicError. Pass validated=True only for
    an expression that `validate` has accepted (a loaded rule), to skip the check."""
    return compile_logic(expr, validated=validated)(data)


def _compile(expr, paths: set):
    if isinstance(expr, (str, bool)) or type(expr) is int or type(expr) is float:
        value = int(expr) if type(expr) is float else expr  # validated: integral

        def literal(data, budget):
            budget.left -= 1
            if budget.left < 0:
                _over_budget()
            return value
        return literal
    if isinstance(expr, list):
        items = [_compile(item, paths) for item in expr]

        def array(data, budget):
            budget.left -= 1
            if budget.left < 0:
                _over_budget()
            return [item(data, budget) for item in items]
        return array
    (operator, operands), = expr.items()
    if operator == "var":
        paths.add(operands)
        return _compile_var(operands)
    return _COMPILERS[operator](operator, operands, [_compile(o, paths) for o in operands]
                                if operator not in _LITERAL_TAIL else
                                [_compile(operands[0], paths)])


# operations whose operands after the first are literals, never evaluated
_LITERAL_TAIL = ("plusTime", "extractFromUVCI")


def _compile_var(path: str):
    if path == "":
        def whole(data, budget):
            budget.left -= 1
            if budget.left < 0:
                _over_budget()
            return data
        return whole
    steps = tuple((f, int(f) if f.isdigit() and f.isascii() else None) for f in path.split("."))

    def var(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        node = data
        for fragment, index in steps:
            if type(node) is dict:  # the usual case first; the order below is the spec's
                node = node.get(fragment)
                continue
            if node is None:
                return None
            if isinstance(node, list):
                if index is None:
                    return None
                node = node[index] if index < len(node) else None
            elif isinstance(node, dict):
                node = node.get(fragment)
            else:
                # drilling into a string or number gives nothing (JS would index characters,
                # which no rule relies on)
                return None
        return node
    return var


def _compile_if(operator, operands, parts):
    guard, then, otherwise = parts

    def if_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        value = guard(data, budget)
        if is_truthy(value):
            return then(data, budget)
        if is_falsy(value):
            return otherwise(data, budget)
        raise CertLogicError(f"if-guard evaluates to something neither truthy nor falsy: "
                             f"{_describe(value)}")
    return if_


def _compile_and(operator, operands, parts):
    first, rest = parts[0], parts[1:]

    def and_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        value = first(data, budget)
        for operand in rest:
            if is_falsy(value):
                return value
            if not is_truthy(value):
                raise CertLogicError('all operands of an "and" operation must be either truthy '
                                     f"or falsy, got {_describe(value)}")
            value = operand(data, budget)
        return value
    return and_


def _compile_not(operator, operands, parts):
    operand, = parts

    def not_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        value = operand(data, budget)
        if is_falsy(value):
            return True
        if is_truthy(value):
            return False
        raise CertLogicError(f'the operand of "!" must be either truthy or falsy, got '
                             f"{_describe(value)}")
    return not_


def _compile_reduce(operator, operands, parts):
    items_of, lambda_, initial = parts

    def reduce_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        items = items_of(data, budget)
        accumulator = initial(data, budget)
        if items is None:
            return accumulator
        if not isinstance(items, list):
            raise CertLogicError(f"operand of reduce evaluated to a non-null non-array: "
                                 f"{_describe(items)}")
        for current in items:
            # "data": the spec allows it, the suite's patched-reduce cases use it
            accumulator = lambda_({"accumulator": accumulator, "current": current,
                                   "data": data}, budget)
        return accumulator
    return reduce_


def _compile_plus_time(operator, operands, parts):
    date_of, = parts
    amount, unit = int(operands[1]), operands[2]

    def plus_time_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        text = date_of(data, budget)
        if not isinstance(text, str):
            raise CertLogicError(f'date argument of "plusTime" must be a string, got '
                                 f"{_describe(text)}")
        return plus_time(text, amount, unit)
    return plus_time_


def _compile_extract(operator, operands, parts):
    uvci_of, = parts
    index = int(operands[1])

    def extract(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        return extract_from_uvci(uvci_of(data, budget), index)
    return extract


def _compile_dob(operator, operands, parts):
    dob_of, = parts

    def dob(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        return dcc_date_of_birth(dob_of(data, budget))
    return dob


def _compile_equal(operator, operands, parts):
    left, right = parts

    def equal(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        a = left(data, budget)
        return _strict_equal(a, right(data, budget), budget)
    return equal


def _compile_in(operator, operands, parts):
    needle_of, haystack_of = parts

    def in_(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        needle = needle_of(data, budget)
        haystack = haystack_of(data, budget)
        if not isinstance(haystack, list):
            raise CertLogicError(f'right-hand side of an "in" operation must be an array, got '
                                 f"{_describe(haystack)}")
        budget.spend(len(haystack))
        return any(_strict_equal(needle, item, budget) for item in haystack)
    return in_


def _compile_plus(operator, operands, parts):
    left, right = parts

    def plus(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        a = left(data, budget)
        b = right(data, budget)
        if not (_is_int(a) and not isinstance(a, bool) and _is_int(b) and not isinstance(b, bool)):
            raise CertLogicError('both operands of a "+" operation must be integers, got '
                                 f"{_describe(a)} and {_describe(b)}")
        return int(a) + int(b)
    return plus


def _compile_comparison(operator, operands, parts):
    check = _COMPARE[operator]

    def compare(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        values = [part(data, budget) for part in parts]
        for v in values:
            if not _is_int(v) or isinstance(v, bool):
                raise CertLogicError(f'all operands of a "{operator}" comparison must be '
                                     f"integers, got {_describe(v)}")
        return all(check(a, b) for a, b in zip(values, values[1:]))
    return compare


def _compile_date_comparison(operator, operands, parts):
    check = _COMPARE[_DATE_ORDER[operator]]

    def _bad(values):
        bad = next(v for v in values if not isinstance(v, datetime))
        raise CertLogicError(f'all operands of a "{operator}" comparison must be date-times '
                             f"(made with plusTime or dccDateOfBirth), got {_describe(bad)}")

    if len(parts) == 2:  # the usual form: no list, one comparison
        left, right = parts

        def compare2(data, budget):
            budget.left -= 1
            if budget.left < 0:
                _over_budget()
            a = left(data, budget)
            b = right(data, budget)
            if type(a) is not datetime and not isinstance(a, datetime) \
                    or type(b) is not datetime and not isinstance(b, datetime):
                _bad((a, b))
            return check(a, b)
        return compare2

    def compare(data, budget):
        budget.left -= 1
        if budget.left < 0:
            _over_budget()
        values = [part(data, budget) for part in parts]
        if not all(isinstance(v, datetime) for v in values):
            _bad(values)
        return all(check(a, b) for a, b in zip(values, values[1:]))
    return compare


_COMPARE = {"<": operator_module.lt, ">": operator_module.gt,
            "<=": operator_module.le, ">=": operator_module.ge}
_DATE_ORDER = {"after": ">", "before": "<", "not-after": "<=", "not-before": ">="}
_COMPILERS = {
    "if": _compile_if, "and": _compile_and, "!": _compile_not, "reduce": _compile_reduce,
    "plusTime": _compile_plus_time, "extractFromUVCI": _compile_extract,
    "dccDateOfBirth": _compile_dob, "===": _compile_equal, "in": _compile_in,
    "+": _compile_plus,
    **{op: _compile_comparison for op in COMPARISONS},
    **{op: _compile_date_comparison for op in DATE_COMPARISONS},
}


def _strict_equal(a, b, budget: _Budget) -> bool:
    """=== without coercion: true and 1 differ, 1 and 1.0 do not (one JSON number)."""
    budget.spend()
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if type(a) is not type(b):
        return isinstance(a, datetime) and isinstance(b, datetime) and a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(_strict_equal(x, y, budget) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k], budget) for k in a)
    return a == b


def _is_number(value) -> bool:
    return type(value) in (int, float)


# -- output ---------------------------------------------------------------------------

def to_json(value):
    """A result as plain JSON data: date-times as ISO text; bounded in size, because a
    reduce can build an exponentially large value out of shared references."""
    nodes = 0

    def convert(node, depth):
        nonlocal nodes
        nodes += 1
        if nodes > MAX_RESULT_NODES or depth > MAX_DEPTH * 4:
            raise CertLogicError(f"the result is larger than {MAX_RESULT_NODES} values")
        if isinstance(node, datetime):
            return format_datetime(node)
        if isinstance(node, list):
            return [convert(item, depth + 1) for item in node]
        if isinstance(node, dict):
            return {str(k): convert(v, depth + 1) for k, v in node.items()}
        if isinstance(node, float) and node != node:  # NaN has no JSON form
            return None
        if node is None or isinstance(node, (str, int, float)):
            return node
        if isinstance(node, date):
            return node.isoformat()
        return str(node)

    try:
        return convert(value, 0)
    except RecursionError:
        raise CertLogicError("the result nests too deeply") from None
