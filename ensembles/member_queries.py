"""The run members table in the database: its columns (the parameter and result names
found in a run), sort orders, and member_filter expressions as Q objects.

Parameters and results are JSON objects (MemberRun.params, .results). A value is
read by key as a number or as a text (NULL when missing or of the other type), so
that numbers sort and compare as numbers, texts byte by byte, and missing values
come last, the same on PostgreSQL and SQLite. Keys are bound parameters, never
part of a lookup or a JSON path: any name a member wrote can be used safely."""

from __future__ import annotations

import functools
import json
import operator
from dataclasses import dataclass, field

from django.core.cache import cache
from django.db import NotSupportedError, connections, router
from django.db.models import Count, F, FloatField, Func, Max, Q, TextField
from django.db.models.lookups import Exact, GreaterThan, GreaterThanOrEqual, In, IsNull, LessThan, LessThanOrEqual

from .member_filter import And, Comparison, FilterError, Literal, Node, Or
from .models import MemberRun, MemberStatus


class _JSONValue(Func):
    """The value at ``key`` of a JSON object column when it has this class's type, else NULL."""

    sqlite_template = ""
    postgresql_template = ""

    def __init__(self, column: str, key: str):
        super().__init__(F(column))
        self.key = key

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError(f"JSON values by key are read on PostgreSQL and SQLite only, not {connection.vendor}.")

    def _render(self, template, compiler, params_per_key):
        column, params = compiler.compile(self.source_expressions[0])
        # The column appears once per key placeholder in each template.
        return template.replace("{column}", column), (*params, self.key) * params_per_key

    def as_sqlite(self, compiler, connection, **extra):
        # json_each matches the key exactly; a JSON path ($."...") cannot name every key.
        return self._render(self.sqlite_template, compiler, 1)

    def as_postgresql(self, compiler, connection, **extra):
        return self._render(self.postgresql_template, compiler, 2)


class JSONNumber(_JSONValue):
    """A number (booleans are not numbers)."""

    output_field = FloatField()
    sqlite_template = "(SELECT CASE WHEN type IN ('integer', 'real') THEN value END FROM json_each({column}) WHERE key = %s)"
    postgresql_template = "(CASE WHEN jsonb_typeof({column} -> %s) = 'number' THEN ({column} -> %s)::double precision END)"


class JSONText(_JSONValue):
    """A text, or ``true`` / ``false`` for a boolean (as the table shows it); compared byte-wise."""

    output_field = TextField()
    sqlite_template = (
        "(SELECT CASE WHEN type = 'text' THEN value WHEN type IN ('true', 'false') THEN type END "
        "FROM json_each({column}) WHERE key = %s)"
    )
    postgresql_template = (
        "(CASE WHEN jsonb_typeof({column} -> %s) IN ('string', 'boolean') THEN ({column} ->> %s) END) COLLATE \"C\""
    )


class RunTime(Func):
    """A member's run time in seconds (ended - started), NULL until it has ended. Computed
    by the database itself: Django's own datetime difference is a Python function on SQLite,
    called per row (a sort or a median over 10^4 members)."""

    output_field = FloatField()

    def __init__(self):
        super().__init__(F("started"), F("ended"))

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError(f"Run times are computed on PostgreSQL and SQLite only, not {connection.vendor}.")

    def _render(self, template, compiler):
        (started, started_params), (ended, ended_params) = (compiler.compile(e) for e in self.source_expressions)
        return template.format(started=started, ended=ended), (*ended_params, *started_params)

    def as_sqlite(self, compiler, connection, **extra):
        # SQLite's date functions count whole milliseconds: rounded to them, a difference is exact.
        return self._render("(ROUND((julianday({ended}) - julianday({started})) * 86400000.0) / 1000.0)", compiler)

    def as_postgresql(self, compiler, connection, **extra):
        return self._render("(EXTRACT(EPOCH FROM ({ended} - {started})))::double precision", compiler)


# --- columns ---------------------------------------------------------------------

MEMBER_FIELDS = ("status", "name", "entity", "returncode", "signal", "attempt", "time")
COLUMNS_CACHE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class MemberColumns:
    """The parameter names of a run in launch order, and its result names in name order
    (PostgreSQL's jsonb does not keep the order a member wrote them in)."""

    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    # How many members have each result: a name only just-changed members have is new.
    result_counts: dict[str, int] = field(default_factory=dict, compare=False)

    def resolve(self, name: str) -> tuple[str, str] | None:
        """("params" | "results", key) or ("field", field name) for a name typed in a filter."""
        if name in self.params:
            return "params", name
        if name in self.results:
            return "results", name
        section, dot, key = name.partition(".")
        if dot and section in ("params", "results") and key in getattr(self, section):
            return section, key
        if name.lower() in MEMBER_FIELDS:
            return "field", name.lower()
        return None


def _column_scan_sql(vendor: str, table: str, run_count: int) -> str:
    where = f"m.run_id IN ({', '.join(['%s'] * run_count)}) AND m.latest = %s"
    if vendor == "sqlite":
        names, keys = "m.param_names", ", json_each(CASE WHEN json_type(m.results) = 'object' THEN m.results END) AS j"
    elif vendor == "postgresql":
        names = "m.param_names::text"
        keys = "CROSS JOIN LATERAL jsonb_object_keys(CASE WHEN jsonb_typeof(m.results) = 'object' THEN m.results END) AS j(key)"
    else:
        raise NotSupportedError(f"A run's columns are read on PostgreSQL and SQLite only, not {vendor}.")
    return (
        f"SELECT 'param', {names}, MIN(m.position) FROM {table} AS m WHERE {where} GROUP BY m.param_names "
        f"UNION ALL SELECT 'result', j.key, COUNT(*) FROM {table} AS m {keys} WHERE {where} GROUP BY j.key"
    )


def _scan_columns(run_ids: list[int]) -> MemberColumns:
    connection = connections[router.db_for_read(MemberRun)]
    sql = _column_scan_sql(connection.vendor, connection.ops.quote_name(MemberRun._meta.db_table), len(run_ids))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*run_ids, True] * 2)
        rows = cursor.fetchall()
    lists = sorted((first, json.loads(names)) for kind, names, first in rows if kind == "param")
    params = {}
    for _, names in lists:
        params.update(dict.fromkeys(names))
    counts = {name: count for kind, name, count in rows if kind == "result"}
    return MemberColumns(tuple(params), tuple(sorted(counts)), counts)


def member_columns(runs: list) -> MemberColumns:
    """The columns of the runs' latest members. Reading them takes every member's JSON, so
    they are kept (cache) under what changes them: results come with a member's Completed
    status (statuses only move forward) and new attempts are new rows; one query over an
    index tells whether either happened since."""
    if not runs:
        return MemberColumns()
    changes = MemberRun.objects.filter(run__in=runs, latest=True).aggregate(
        completed=Count("id", filter=Q(status=MemberStatus.COMPLETED)), last=Max("id")
    )
    # The runs' creation times too: ids are reused by the test databases' rollbacks.
    runs_key = ",".join(f"{run.pk}@{run.created.timestamp()}" for run in runs)
    key = f"flotilla:member-columns:{runs_key}:{changes['completed']}:{changes['last']}"
    columns = cache.get(key)
    if columns is None:
        columns = _scan_columns([run.pk for run in runs])
        cache.set(key, columns, COLUMNS_CACHE_SECONDS)
    return columns


# --- sorting ---------------------------------------------------------------------

# The member table's own sortable columns (besides parameters and results); started and
# ended are kept for old links. Missing values come last either way, on both databases.
FIELD_SORTS = {
    "position": lambda: [F("position")],
    "time": lambda: [RunTime()],
    "returncode": lambda: [F("returncode")],
    "started": lambda: [F("started")],
    "ended": lambda: [F("ended")],
}


def member_ordering(sort: str, columns: MemberColumns) -> tuple[str, list]:
    """``sort`` as understood ("position" when it names nothing sortable: an old or
    edited link) and its ORDER BY, ties broken by position. ``-`` sorts descending."""
    descending = sort.startswith("-")
    key = sort[1:] if descending else sort
    section, dot, name = key.partition(".")
    if key in FIELD_SORTS:
        values = FIELD_SORTS[key]()
    elif dot and section in ("params", "results") and name in getattr(columns, section):
        # Numbers first (as numbers), then texts: a column may mix both.
        values = [JSONNumber(section, name)] + ([JSONText(section, name)] if section == "params" else [])
    else:
        return "position", [F("position").asc()]
    order = [value.desc(nulls_last=True) if descending else value.asc(nulls_last=True) for value in values]
    return sort, order + ([] if key == "position" else [F("position").asc()])


# --- filtering -------------------------------------------------------------------

_LOOKUPS = {"<": LessThan, "<=": LessThanOrEqual, ">": GreaterThan, ">=": GreaterThanOrEqual}


def _listed(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    return shown or "none"


def _unknown(name: str, columns: MemberColumns) -> FilterError:
    return FilterError(
        f"Unknown name '{name}': the run's parameters are {_listed(columns.params)}; its results "
        f"{_listed(columns.results)}; a member's fields {', '.join(MEMBER_FIELDS)}."
    )


def _texts(literal: Literal) -> list[str]:
    """The texts a value equals: as typed, and ``true``/``false`` as booleans are shown."""
    texts = [literal.text]
    if isinstance(literal.value, bool) and literal.text != str(literal.value).lower():
        texts.append(str(literal.value).lower())
    return texts


def _json_q(section: str, key: str, comparison: Comparison) -> Q:
    op, literal = comparison.op, comparison.value
    number = JSONNumber(section, key)
    text = JSONText(section, key)
    if section == "results" and literal.number is None:
        raise FilterError(f"Results are numbers: compare '{comparison.name}' with a number, not '{literal.text}'.")
    if op == "=":
        equal = Q(In(text, _texts(literal)))
        return equal | Q(Exact(number, literal.number)) if literal.number is not None else equal
    if op == "!=":  # a member without the value is not "different": it has none
        different = Q(IsNull(text, False)) & ~Q(In(text, _texts(literal)))
        if literal.number is None:
            return different | Q(IsNull(number, False))
        return different | (Q(IsNull(number, False)) & ~Q(Exact(number, literal.number)))
    if literal.number is not None:
        return Q(_LOOKUPS[op](number, literal.number))
    return Q(_LOOKUPS[op](text, literal.text))


def _status(literal: Literal) -> str:
    for status in MemberStatus.values:
        if status.lower() == literal.text.lower():
            return status
    raise FilterError(f"Unknown status '{literal.text}': one of {', '.join(MemberStatus.values)}.")


def _field_q(name: str, comparison: Comparison) -> Q:
    op, literal = comparison.op, comparison.value
    if name in ("status", "name", "entity"):
        if op not in ("=", "!="):
            raise FilterError(f"'{name}' can only be compared with = or !=.")
        value = _status(literal) if name == "status" else literal.text
        return Q(**{name: value}) if op == "=" else ~Q(**{name: value})
    if literal.number is None:
        unit = " (seconds)" if name == "time" else ""
        raise FilterError(f"'{name}' is a number{unit}: compare it with a number, not '{literal.text}'.")
    value, lhs = literal.number, RunTime() if name == "time" else F(name)
    if op == "=":
        return Q(Exact(lhs, value))
    if op == "!=":
        return Q(IsNull(lhs, False)) & ~Q(Exact(lhs, value))
    return Q(_LOOKUPS[op](lhs, value))


def filter_q(node: Node, columns: MemberColumns) -> Q:
    """The members ``node`` matches, as a Q; FilterError for a name the run does not
    have or a comparison that cannot hold (text against a result, say)."""
    if isinstance(node, (And, Or)):
        parts = [filter_q(part, columns) for part in node.parts]
        return functools.reduce(operator.and_ if isinstance(node, And) else operator.or_, parts)
    target = columns.resolve(node.name)
    if target is None:
        raise _unknown(node.name, columns)
    section, key = target
    return _field_q(key, node) if section == "field" else _json_q(section, key, node)
