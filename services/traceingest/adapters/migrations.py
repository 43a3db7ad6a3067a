"""Versioned ClickHouse schema migrations: `migrations/NNN_name.sql`, applied in order.

Each applied file is recorded in `<db>.schema_migrations` (version, name, checksum). Every
statement in a file is idempotent (IF NOT EXISTS, a guarded backfill), so a run that died
half-way through a file is finished by the next run, and two replicas starting together
do no harm. `{db}` in a file is the database name, which is checked to be an identifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from interlock.services.traceingest.adapters.clickhouse import ClickHouseClient

log = logging.getLogger("interlock.traceingest.migrations")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


class MigrationError(Exception):
    """The migration files are inconsistent (bad name, duplicate version, edited after applying)."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    """The file's text, `{db}` not yet replaced."""

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self, database: str) -> list[str]:
        """The file's statements for `database`: `--` comment lines dropped, split at `;`."""
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip().replace("{db}", database) for s in text.split(";") if s.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, by version; MigrationError if a name or version is off."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version=version, name=match.group(2), sql=path.read_text())
    return [found[v] for v in sorted(found)]


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str


class MigrationRunner:
    """Brings database `database` of one ClickHouse engine up to the newest migration."""

    def __init__(self, client: ClickHouseClient, database: str, migrations: list[Migration] | None = None) -> None:
        self.client = client
        self.database = database
        self.migrations = load_migrations() if migrations is None else migrations

    async def applied(self) -> list[AppliedMigration]:
        """Migrations recorded as applied, by version (creates the record table if missing)."""
        await self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        await self.client.command(_MIGRATIONS_DDL.format(db=self.database))
        rows = await self.client.select(
            f"SELECT version, name, checksum FROM {self.database}.{MIGRATIONS_TABLE} FINAL ORDER BY version", {}
        )
        return [AppliedMigration(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def migrate(self) -> list[Migration]:
        """Apply every migration not yet recorded, in order; returns those applied now."""
        done = {m.version: m for m in await self.applied()}
        for migration in self.migrations:
            recorded = done.get(migration.version)
            if recorded is not None and recorded.checksum != migration.checksum:
                # Applied files are history: a change goes into a new file, never an old one.
                log.warning(
                    "applied migration file changed since it was applied",
                    extra={"fields": {"version": migration.version, "name": migration.name}},
                )
        pending = [m for m in self.migrations if m.version not in done]
        for migration in pending:
            for statement in migration.statements(self.database):
                await self.client.command(statement)
            row = {"version": migration.version, "name": migration.name, "checksum": migration.checksum}
            await self.client.insert_json_rows(
                f"{self.database}.{MIGRATIONS_TABLE}",
                ("version", "name", "checksum"),
                json.dumps(row).encode() + b"\n",
            )
            log.info(
                "applied schema migration",
                extra={"fields": {"version": migration.version, "name": migration.name}},
            )
        return pending
