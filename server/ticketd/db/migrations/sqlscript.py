"""Run a multi-statement SQL script in a migration.

asyncpg prepares every statement, and a prepared statement holds exactly one command, so
scripts are split on semicolons that end a line. Statements with bodies ($$ ... $$) go in
their own `op.execute` call instead.
"""

from __future__ import annotations

from alembic import op


def run_script(sql: str) -> None:
    for statement in sql.split(";\n"):
        if statement.strip():
            op.execute(statement)
