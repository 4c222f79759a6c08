"""--polygons: a mosaic's classes as polygons, into GeoJSON, a GeoPackage or a PostGIS table.

GDAL's polygonizer (`rasterio.features.shapes` on the COG's band, which it reads line by line rather
than as one array) traces each connected region of one class; each is simplified to --simplify
(in the CRS's units, topology kept), dropped below --min-area, and written with its class index,
class name and area. The background class (--background) and nodata give no polygons. The
polygons are written anew from the mosaic at the end of every run, to a temporary name first
(GeoPackage and GeoJSON) or in one transaction (PostGIS), so a reader never sees half of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import defaults
from .sinks import POSTGRES_SCHEMES, SinkError, masked

POLYGON_SUFFIXES = (".geojson", ".gpkg")


@dataclass
class PolygonOptions:
    simplify: float = defaults.POLYGON_SIMPLIFY
    min_area: float = defaults.POLYGON_MIN_AREA
    background: frozenset[int] = frozenset({0})
    classes: list[str] = field(default_factory=list)  # names in class-index order, where the server says them


def vectorize(raster: Path, options: PolygonOptions) -> Iterator[tuple[Any, int]]:
    """(shapely Polygon in the raster's CRS, class index) for each region of a class that is kept."""
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape

    with rasterio.open(raster) as dataset:
        for geometry, value in shapes(rasterio.band(dataset, 1), connectivity=4, transform=dataset.transform):
            index = int(value)
            if index == defaults.MOSAIC_NODATA or index in options.background:
                continue
            polygon = shape(geometry)
            if options.simplify > 0:
                polygon = polygon.simplify(options.simplify, preserve_topology=True)
            if polygon.is_empty or polygon.area < options.min_area:
                continue
            yield polygon, index


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class PolygonWriter:
    """Where --polygons go: a .geojson (WGS 84, RFC 7946) or .gpkg file, or a PostGIS table `<table>_polygons`."""

    def __init__(self, destination: str, table: str, crs: Any, options: PolygonOptions) -> None:
        self.destination, self.crs, self.options = destination, crs, options
        self.table = f"{table}_polygons"
        if not destination.startswith(POSTGRES_SCHEMES) and Path(destination).suffix.lower() not in POLYGON_SUFFIXES:
            raise ValueError(f"--polygons {destination!r}: give a .geojson or .gpkg file, or a postgresql:// URL")

    def describe(self) -> str:
        if self.destination.startswith(POSTGRES_SCHEMES):
            return f"{masked(self.destination)} table {self.table}"
        return self.destination

    def _name(self, index: int) -> str:
        classes = self.options.classes
        return classes[index] if index < len(classes) else str(index)

    def write(self, polygons: Iterable[tuple[Any, int]]) -> int:
        """Replace the destination's polygons with these; returns how many were written."""
        if self.destination.startswith(POSTGRES_SCHEMES):
            return self._write_postgis(polygons)
        return self._write_file(Path(self.destination), polygons)

    def _write_file(self, path: Path, polygons: Iterable[tuple[Any, int]]) -> int:
        import numpy as np
        import shapely
        from pyogrio.raw import write

        geojson = path.suffix.lower() == ".geojson"
        temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
        temporary.unlink(missing_ok=True)
        options = {"driver": "GeoJSON", "layer_options": {"RFC7946": "YES"}} if geojson else {"driver": "GPKG"}
        fields = ["class", "class_name", "area"]
        written = 0
        for chunk in _chunks(polygons, defaults.POLYGON_CHUNK):
            geometry = np.array([shapely.to_wkb(polygon) for polygon, _ in chunk], dtype=object)
            columns = [
                np.array([index for _, index in chunk], dtype=np.int32),
                np.array([self._name(index) for _, index in chunk], dtype=object),
                np.array([polygon.area for polygon, _ in chunk], dtype=np.float64),
            ]
            write(
                str(temporary), geometry, columns, fields, layer="polygons", geometry_type="Polygon",
                crs=str(self.crs), encoding="UTF-8", append=written > 0, **options,
            )  # fmt: skip
            written += len(chunk)
        if written == 0:  # no polygon: still a valid, empty layer, so a reader finds the output it asked for
            empty = np.array([], dtype=object)
            columns = [np.array([], dtype=np.int32), empty, np.array([], dtype=np.float64)]
            write(
                str(temporary), empty, columns, fields, layer="polygons", geometry_type="Polygon",
                crs=str(self.crs), encoding="UTF-8", **options,
            )  # fmt: skip
        os.replace(temporary, path)
        return written

    def _write_postgis(self, polygons: Iterable[tuple[Any, int]]) -> int:
        import psycopg
        import shapely
        from psycopg import sql

        from .places import srid_of

        srid = srid_of(self.crs, "the mosaic")
        table = sql.Identifier(self.table)
        try:
            connection = psycopg.connect(self.destination, connect_timeout=defaults.DATABASE_CONNECT_TIMEOUT_S)
        except psycopg.Error as error:
            raise SinkError(f"cannot connect to {masked(self.destination)}: {str(error).strip()}") from error
        written = 0
        with connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            connection.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id serial PRIMARY KEY, class integer NOT NULL, class_name text, "
                    "area double precision, geom geometry(Polygon, {}))"
                ).format(table, sql.Literal(srid))
            )
            connection.execute(sql.SQL("DELETE FROM {}").format(table))
            insert = sql.SQL(
                "INSERT INTO {} (class, class_name, area, geom) VALUES (%s, %s, %s, ST_GeomFromWKB(%s, {}))"
            ).format(table, sql.Literal(srid))
            with connection.cursor() as cursor:
                for chunk in _chunks(polygons, defaults.POLYGON_CHUNK):
                    rows = [(index, self._name(index), p.area, shapely.to_wkb(p)) for p, index in chunk]
                    cursor.executemany(insert, rows)
                    written += len(chunk)
        return written  # the connection's block committed it all at once
