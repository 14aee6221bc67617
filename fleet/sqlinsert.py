"""INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL: one code path.

Both dialects spell it the same in SQL; SQLAlchemy has it per dialect
(sqlalchemy.dialects.sqlite.insert / .postgresql.insert), so the dialect of the
connection picks the construct. The conflict target names the unique key, so
any other constraint violation still raises.
"""

from __future__ import annotations

from sqlalchemy import Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_ignore(bind, table: Table, conflict: list[str]):
    """An insert into `table` that skips rows whose `conflict` columns exist already.
    bind: a Connection, Engine or Dialect (anything with .dialect or .name)."""
    dialect = getattr(bind, "dialect", bind)
    try:
        make = _INSERTS[dialect.name]
    except KeyError:
        raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect.name}; the fleet "
                                  "runs on SQLite or PostgreSQL") from None
    return make(table).on_conflict_do_nothing(index_elements=conflict)


class BulkInsert:
    """insert_ignore() compiled once for the connection's dialect and run by the driver
    itself, for the ingest's hot path. execute() returns the rows actually inserted
    (ON CONFLICT DO NOTHING rows count 0) on both databases.

    Why not connection.execute(insert, rows): with psycopg, SQLAlchemy turns an
    executemany INSERT into pages of multi-row VALUES ("insertmanyvalues") and then
    cannot say how many rows were inserted (rowcount -1), so duplicates could not be
    counted; psycopg's own pipelined executemany is also about half again as fast.

    Why multi-row VALUES on SQLite (`per_statement` rows per statement): sqlite3's
    executemany releases and re-takes the GIL around every row, and in the ingest
    worker paho's network thread wants the GIL all the time; 500 hand-overs per batch
    made executemany ten times slower there than alone (bench/ingest.py --profile).
    One statement per 100 rows is 5 hand-overs (100 x 13 columns stays far below
    SQLite's 32766 host parameters). On PostgreSQL, psycopg's pipelined executemany
    stays faster than multi-row VALUES (measured both), so it keeps one row per
    statement there.
    """

    def __init__(self, bind, table: Table, conflict: list[str], columns: list[str],
                 per_statement: int | None = None):
        self.dialect = getattr(bind, "dialect", bind)
        self.table, self.conflict, self.columns = table, conflict, list(columns)
        if per_statement is None:
            per_statement = 100 if self.dialect.name == "sqlite" else 1
        self.per_statement = max(1, per_statement)
        self._sql: dict[int, tuple] = {}  # multi-row statements by row count
        # for_executemany: no implicit RETURNING of the new primary key per row
        compiled = insert_ignore(self.dialect, table, conflict).compile(
            dialect=self.dialect, column_keys=self.columns, for_executemany=True)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.order = [self.columns.index(name) for name in compiled.positiontup] \
            if compiled.positional else None

    def _multi(self, n: int) -> tuple[str, list[tuple[int, int]] | None]:
        """The statement for n rows at once, and for positional drivers the (row, column)
        of each parameter in order (None: row-major in `columns` order, the usual case)."""
        entry = self._sql.get(n)
        if entry is None:
            rows = [{c: bindparam(f"r{i}_{j}") for j, c in enumerate(self.columns)}
                    for i in range(n)]
            compiled = insert_ignore(self.dialect, self.table, self.conflict).values(
                rows).compile(dialect=self.dialect)
            pairs = None
            if compiled.positional:
                pairs = [tuple(int(x) for x in name[1:].split("_"))
                         for name in compiled.positiontup]
                if pairs == [(i, j) for i in range(n) for j in range(len(self.columns))]:
                    pairs = None
            entry = self._sql[n] = (compiled.string, pairs)
        return entry

    def execute(self, connection, rows: list[tuple]) -> int:
        """Insert rows (tuples in `columns` order) in the connection's transaction; the
        number actually inserted."""
        if not rows:
            return 0
        if self.per_statement > 1:
            inserted, step = 0, self.per_statement
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                sql, pairs = self._multi(len(chunk))
                if not self.positional:  # named r<row>_<column>
                    params = {f"r{i}_{j}": v for i, row in enumerate(chunk)
                              for j, v in enumerate(row)}
                elif pairs is None:
                    params = tuple(v for row in chunk for v in row)
                else:
                    params = tuple(chunk[i][j] for i, j in pairs)
                inserted += connection.exec_driver_sql(sql, params).rowcount
            return inserted
        if not self.positional:  # pyformat (psycopg): named parameters
            names = self.columns
            rows = [dict(zip(names, row)) for row in rows]
        elif self.order != list(range(len(self.columns))):  # qmark in the table's order
            rows = [tuple(row[i] for i in self.order) for row in rows]
        return connection.exec_driver_sql(self.sql, rows).rowcount
