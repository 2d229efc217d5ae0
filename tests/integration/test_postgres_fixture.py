"""The session's PostgreSQL server is real, keeps what one connection commits, and isolates each test.

Tests that run the registry on PostgreSQL trust these properties of the fixture.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

TABLE = "fixture_probe"


class FixtureProbe(SQLModel, table=True):
    __tablename__ = TABLE

    id: int | None = Field(default=None, primary_key=True)
    name: str
    value: float


def test_rows_written_through_one_engine_are_read_back_through_another(postgres_db_url: str) -> None:
    writer = create_engine(postgres_db_url)
    try:
        # Only this table: the shared metadata also holds whatever application models were imported.
        SQLModel.metadata.create_all(writer, tables=[SQLModel.metadata.tables[TABLE]])
        with Session(writer) as session:
            session.add_all([FixtureProbe(name="b", value=-2.0), FixtureProbe(name="a", value=1.5)])
            session.commit()
    finally:
        writer.dispose()

    reader = create_engine(postgres_db_url)
    try:
        with Session(reader) as session:
            rows = session.exec(select(FixtureProbe).order_by(col(FixtureProbe.name))).all()
    finally:
        reader.dispose()
    assert [(row.name, row.value) for row in rows] == [("a", 1.5), ("b", -2.0)]


def test_server_is_postgresql_and_the_database_is_private(postgres_url: str, postgres_db_url: str) -> None:
    engine = create_engine(postgres_db_url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version()")).scalar_one()
            database = connection.execute(text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL"), version
    assert database == make_url(postgres_db_url).database
    assert database != make_url(postgres_url).database
