"""Areas in: a GeoJSON of polygons becomes the XYZ tiles that cover it at a zoom, keyed `x-y-z` as chip-n-scale's lists.

The cover is found by descending mercantile's quadtree in web mercator (where tiles are squares and
the polygons are projected as supermercado projects them): a tile outside the area is dropped with
everything under it, a tile inside it brings all its descendants at the zoom without another test,
and only tiles on the area's boundary are split further. So the tiles stream out in quadtree order
without the whole list in memory, and counting them costs the boundary's tiles, not the area's.
A tile counts when it shares some area with the polygons, not merely an edge or a corner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mercantile

from .tiles import MAX_ZOOM, Tile, check_template, tile_url

# Below this many levels a contained tile's descendants are listed at once (4**6 = 4096 tiles) rather than descended.
_LIST_BELOW_LEVELS = 6
# A boundary tile whose shared area is below this fraction of its own is a rounding sliver along a shared edge.
_SLIVER = 1e-9


def _polygonal(geometry: dict, where: str) -> Any:
    from shapely.geometry import shape

    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"{where} is a {kind or 'missing geometry'}: an area is made of Polygons and MultiPolygons")
    try:
        polygon = shape(geometry)
    except (ValueError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"{where} is not a valid GeoJSON {kind}: {error}") from error
    if not polygon.is_valid:
        from shapely.validation import explain_validity

        raise ValueError(
            f"{where} is an invalid {kind} ({explain_validity(polygon)}): fix it, e.g. with QGIS's Fix Geometries"
        )
    return polygon


def read_area(path: Path) -> tuple[Any, int]:
    """The union of a GeoJSON's polygons (RFC 7946: longitude and latitude, WGS 84) and how many there were."""
    from shapely import union_all

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--area {path}: cannot read it as GeoJSON ({error})") from error
    crs = document.get("crs") if isinstance(document, dict) else None
    if crs is not None:  # GeoJSON 2008's member; RFC 7946 has only WGS 84
        name = str((crs.get("properties") or {}).get("name", "")) if isinstance(crs, dict) else ""
        if not name.upper().endswith(("CRS84", "4326")):
            raise ValueError(f"--area {path}: its crs is {name or crs!r}; give the area in WGS 84 (RFC 7946)")
    kind = document.get("type") if isinstance(document, dict) else None
    if kind == "FeatureCollection":
        geometries = [
            (feature.get("geometry") if isinstance(feature, dict) else None, f"--area {path}, feature {index}")
            for index, feature in enumerate(document.get("features") or [])
        ]
    elif kind == "Feature":
        geometries = [(document.get("geometry"), f"--area {path}, its feature")]
    else:
        geometries = [(document, f"--area {path}")]
    polygons = [_polygonal(geometry, where) for geometry, where in geometries]
    if not polygons:
        raise ValueError(f"--area {path} holds no polygons")
    return union_all(polygons), len(polygons)


@dataclass
class AreaCover:
    """The XYZ tiles at `zoom` that share area with `area` (shapely, longitude and latitude)."""

    area: Any
    zoom: int
    _projected: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import numpy as np
        import shapely
        from pyproj import Transformer

        if not 0 <= self.zoom <= MAX_ZOOM:
            raise ValueError(f"--zoom {self.zoom}: give 0 to {MAX_ZOOM}")
        world = mercantile.bounds(0, 0, 0)  # web mercator ends at about 85.05 degrees north and south
        clipped = self.area.intersection(shapely.box(*world))
        to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
        self._projected = shapely.transform(
            clipped, lambda xy: np.column_stack(to_mercator.transform(xy[:, 0], xy[:, 1]))
        )
        shapely.prepare(self._projected)

    def _square(self, tile: mercantile.Tile) -> Any:
        import shapely

        return shapely.box(*mercantile.xy_bounds(tile))

    def _shares_area(self, square: Any) -> bool:
        return self._projected.intersection(square).area > square.area * _SLIVER

    def _walk(self) -> Iterator[tuple[mercantile.Tile, bool]]:
        """(tile, whole) pairs, depth first: a whole tile stands for all its descendants at the zoom."""
        stack = [mercantile.Tile(0, 0, 0)]
        while stack:
            tile = stack.pop()
            square = self._square(tile)
            if not self._projected.intersects(square):
                continue
            if self._projected.contains(square):
                yield tile, True
            elif tile.z == self.zoom:
                if self._shares_area(square):
                    yield tile, False
            else:
                stack.extend(reversed(mercantile.children(tile)))

    def _below(self, tile: mercantile.Tile) -> Iterator[mercantile.Tile]:
        if self.zoom - tile.z <= _LIST_BELOW_LEVELS:
            yield from mercantile.children(tile, zoom=self.zoom) if tile.z < self.zoom else [tile]
            return
        for child in mercantile.children(tile):
            yield from self._below(child)

    def tiles(self) -> Iterator[Tile]:
        """Every covering tile once, in quadtree order, streamed."""
        for tile, whole in self._walk():
            for found in self._below(tile) if whole else [tile]:
                yield Tile(found.x, found.y, found.z)

    def count(self) -> int:
        """How many tiles `tiles` gives, found without listing the area's inner tiles."""
        return sum(4 ** (self.zoom - tile.z) if whole else 1 for tile, whole in self._walk())

    def tile_range(self) -> tuple[int, int, int, int] | None:
        """(min x, min y, max x, max y) of the covering tiles (the mosaic's extent in tiles); None for no tile."""
        found = None
        for tile, whole in self._walk():
            levels = self.zoom - tile.z if whole else 0  # a whole tile spans 2**levels tiles each way at the zoom
            x0, y0 = tile.x << levels, tile.y << levels
            x1, y1 = ((tile.x + 1) << levels) - 1, ((tile.y + 1) << levels) - 1
            found = (
                (x0, y0, x1, y1)
                if found is None
                else (min(found[0], x0), min(found[1], y0), max(found[2], x1), max(found[3], y1))
            )
        return found


@dataclass
class AreaSource:
    """--area with --zoom and --imagery: the covering tiles, each fetched from the XYZ template; key = `x-y-z`."""

    path: Path
    zoom: int
    template: str
    noun: str = "tiles"
    unique = True  # keys never repeat: no need to remember them to drop repeats
    cover: AreaCover = field(init=False)
    polygons: int = field(init=False)

    def __post_init__(self) -> None:
        check_template(self.template)
        area, self.polygons = read_area(self.path)
        self.cover = AreaCover(area, self.zoom)

    def keys(self) -> Iterator[str]:
        return (tile.key for tile in self.cover.tiles())

    def count(self) -> int:
        return self.cover.count()

    def locate(self, key: str) -> str:
        from .tiles import parse_tile

        return tile_url(self.template, parse_tile(key))

    def describe(self) -> str:
        plural = "s" if self.polygons != 1 else ""
        return f"area {self.path} ({self.polygons} polygon{plural}) at zoom {self.zoom} with imagery {self.template}"
