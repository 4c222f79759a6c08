"""Answers on the map: one feature per tile or window, with its footprint, in a GeoPackage or a PostGIS table.

Both are their own record of what is done, as chip-n-scale's table is: a GeoPackage is a SQLite
database, and each commit is one OGR transaction of the answers that have arrived, so a killed run
leaves whole features and a rerun skips their keys; PostGIS is chip-n-scale's table with a
`geom geometry(Polygon, SRID)` column added, written with the same upserts. Footprints are in the
source's own CRS (a scene's; web mercator for tiles), where they are exact.
GeoJSON (places.py's footprints in WGS 84) stays sinks.py's GeoJsonSink, rendered at the end.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from .sinks import FailureFile, PostgresSink, SinkError, compact_json, masked


class Places(Protocol):
    crs: Any

    def footprint(self, key: str) -> Any:
        """The key's footprint, a shapely Polygon in `crs`."""


def answer_values(key: str, prediction: Any) -> list[float]:
    """A classifier's probabilities, multi-label scores or regression values; ValueError for a mask or anything else."""
    values = prediction if isinstance(prediction, list) else [prediction]
    if not values or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise ValueError(
            f"a map of features needs numbers per key (probabilities, scores or values); {key} has "
            f"{compact_json(prediction)[:80]} (a segmentation model's masks go to a .tif mosaic)"
        )
    return [float(value) for value in values]


class GeoPackageSink:
    """`.gpkg`: layer `layer` of Polygons in the places' CRS, a text field `key_name`, and `p0`, `p1`, ...

    Written through pyogrio (GDAL's GPKG driver), a transaction per commit; done keys are read back
    with SQLite. Locked (a lock file beside it) while a run writes it.
    """

    def __init__(self, path: Path, places: Places, layer: str, key_name: str) -> None:
        self.path, self.places, self.layer, self.key_name = path, places, layer, key_name
        self.failures = FailureFile(path.with_name(path.name + ".failed.jsonl"))
        self.where_failures = str(self.failures.path)
        self.repaired_bytes = 0  # SQLite rolls a torn transaction back itself
        self._lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(self._lock)
            raise SinkError(f"another predict-batch is writing {path}: give each process its own file") from error
        self._width: int | None = None  # how many p fields the layer has, once it exists
        try:
            self._done = self._read_done()
        except BaseException:
            os.close(self._lock)
            raise
        self._failed = self.failures.load()

    def _read_done(self) -> set[str]:
        if not self.path.exists():
            return set()
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as database:
                tables = {name for (name,) in database.execute("SELECT table_name FROM gpkg_contents")}
                if self.layer not in tables:
                    return set()
                columns = [row[1] for row in database.execute(f'PRAGMA table_info("{self.layer}")')]
                if self.key_name not in columns:
                    raise SinkError(f"{self.path}, layer {self.layer}, has no {self.key_name} field: not this run's")
                self._width = sum(1 for name in columns if re.fullmatch(r"p\d+", name))
                return {key for (key,) in database.execute(f'SELECT "{self.key_name}" FROM "{self.layer}"')}
        except sqlite3.DatabaseError as error:
            raise SinkError(f"{self.path} is not a GeoPackage ({error}); move it away") from error

    def done_keys(self) -> set[str]:
        return set(self._done)

    def earlier_failures(self) -> dict[str, str]:
        return {key: reason for key, reason in self._failed.items() if key not in self._done}

    def commit(self, results: list[tuple[str, Any]]) -> None:
        import numpy as np
        import shapely
        from pyogrio.raw import write

        if not results:
            return
        rows = [answer_values(key, prediction) for key, prediction in results]
        width = self._width if self._width is not None else max(len(values) for values in rows)
        geometry = np.array([shapely.to_wkb(self.places.footprint(key)) for key, _ in results], dtype=object)
        fields = [self.key_name] + [f"p{index}" for index in range(width)]
        columns = [np.array([key for key, _ in results], dtype=object)]
        columns += [np.array([values[i] if i < len(values) else np.nan for values in rows]) for i in range(width)]
        write(
            str(self.path), geometry, columns, fields, layer=self.layer, driver="GPKG", geometry_type="Polygon",
            crs=str(self.places.crs), encoding="UTF-8", append=self._width is not None and self.path.exists(),
        )  # fmt: skip
        self._width = width
        self._done.update(key for key, _ in results)

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        if failures:
            self.failures.record(failures)
            self._failed.update(failures)

    def close(self) -> str:
        self.failures.rewrite(self.earlier_failures())
        os.close(self._lock)
        return f"{self.path}: {len(self._done)} features in layer {self.layer}"

    def describe(self) -> str:
        return f"{self.path} (GeoPackage, layer {self.layer}, {self.places.crs})"


class PostgisSink(PostgresSink):
    """chip-n-scale's table plus `geom geometry(Polygon, SRID)`: each row's footprint, in the places' CRS."""

    def __init__(self, url: str, table: str, places: Places, srid: int) -> None:
        from psycopg import sql

        super().__init__(url, table)
        self.places, self.srid = places, srid
        results = sql.Identifier(table)
        try:
            self._create(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgis"))
        except self._psycopg.Error as error:
            self.connection.close()
            raise SinkError(
                f"{masked(url)}: PostGIS is not available there ({str(error).strip()}); install it on the database "
                "server (Debian: postgresql-15-postgis-3) or write a .gpkg"
            ) from error
        self._create(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS geom geometry(Polygon, {})").format(
                results, sql.Literal(srid)
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING GIST (geom)").format(
                sql.Identifier(f"{table}_geom"), results
            ),
        )
        found = self.connection.execute(
            "SELECT srid FROM geometry_columns WHERE f_table_name = %s AND f_geometry_column = 'geom'", (table,)
        ).fetchone()
        self.connection.commit()
        if found and found[0] != srid:
            self.connection.close()
            raise SinkError(
                f"table {table}'s geom column has SRID {found[0]}, not this run's {srid}: use another --table"
            )
        self._upsert = sql.SQL(
            "INSERT INTO {} (tile, output, geom) VALUES (%s, %s, ST_GeomFromWKB(%s, {})) "
            "ON CONFLICT (tile) DO UPDATE SET output = EXCLUDED.output, geom = EXCLUDED.geom"
        ).format(results, sql.Literal(srid))

    def commit(self, results: list[tuple[str, Any]]) -> None:
        import shapely

        if not results:
            return
        rows = [
            (key, self._jsonb(prediction), shapely.to_wkb(self.places.footprint(key))) for key, prediction in results
        ]
        with self.connection.cursor() as cursor:
            cursor.executemany(self._upsert, rows)
            cursor.execute(self._forget_failed, ([key for key, _ in results],))
        self.connection.commit()

    def describe(self) -> str:
        return f"{super().describe()} with geometries (SRID {self.srid})"
