"""Where each key lies on the map: its footprint, and for a mosaic the pixels it fills.

Two kinds of key have a place: XYZ tiles (`x-y-z`, from --tiles or --area), whose footprints are
mercantile's squares in web mercator (EPSG:3857) and, for GeoJSON, the same square in longitude and
latitude chip-n-scale's convert-geojson writes; and scene windows (`COL-ROW-WIDTHxHEIGHT`, from
--raster), whose footprints are the window's pixel corners through the scene's own transform, in
the scene's CRS, and reprojected (densified first, so curved edges stay close) for GeoJSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mercantile

from .scenes import WindowGrid, parse_window_key
from .tiles import parse_tile, tile_polygon, tile_xy_bounds

WGS84 = "EPSG:4326"
WEB_MERCATOR = "EPSG:3857"
DENSIFY_POINTS = 8  # points added along each edge of a window's footprint before it is reprojected to GeoJSON's WGS 84


def srid_of(crs: Any, what: str) -> int:
    """The EPSG code PostGIS names a CRS by; ValueError when it has none."""
    from rasterio.crs import CRS

    code = CRS.from_user_input(crs).to_epsg() if crs else None
    if code is None:
        raise ValueError(f"{what}'s CRS ({crs or 'none'}) has no EPSG code, which PostGIS needs as its SRID")
    return code


@dataclass
class Placement:
    """A key's pixels in the mosaic: the window it was predicted on, and the part of it the mosaic keeps."""

    window: tuple[int, int, int, int]  # (col, row, width, height)
    kept: tuple[int, int, int, int]  # inside `window`, in the mosaic's pixels


class TilePlaces:
    """XYZ tiles: squares in web mercator. With `tile_range` and `tile_pixels`, also a mosaic of them."""

    crs = WEB_MERCATOR
    noun = "tiles"

    def __init__(self, tile_range: tuple[int, int, int, int] | None = None, zoom: int = 0, tile_pixels: int = 256):
        self.tile_range, self.zoom, self.tile_pixels = tile_range, zoom, tile_pixels

    def footprint(self, key: str) -> Any:
        import shapely

        return shapely.box(*tile_xy_bounds(parse_tile(key)))

    def wgs84(self, key: str) -> dict:
        return tile_polygon(parse_tile(key))

    def mosaic(self) -> tuple[int, int, Any]:
        """(width, height, transform) of the mosaic of the tile range."""
        from rasterio.transform import from_origin

        if self.tile_range is None:
            raise ValueError("a mosaic of tiles needs --area: a tile list gives no extent to lay them in")
        x0, y0, x1, y1 = self.tile_range
        left, _, right, top = mercantile.xy_bounds(x0, y0, self.zoom)
        size = (right - left) / self.tile_pixels
        return (x1 - x0 + 1) * self.tile_pixels, (y1 - y0 + 1) * self.tile_pixels, from_origin(left, top, size, size)

    def place(self, key: str) -> Placement:
        tile = parse_tile(key)
        x0, y0, x1, y1 = self.tile_range or (0, 0, -1, -1)
        if tile.z != self.zoom or not (x0 <= tile.x <= x1 and y0 <= tile.y <= y1):
            raise ValueError(f"tile {key} lies outside the area's tiles at zoom {self.zoom}")
        size = self.tile_pixels
        window = ((tile.x - x0) * size, (tile.y - y0) * size, size, size)
        return Placement(window, window)


@dataclass
class WindowPlaces:
    """Scene windows: pixel rectangles through the scene's transform, in its CRS."""

    noun = "windows"
    crs: Any
    transform: Any
    grid: WindowGrid | None = None  # the scene's windows, for a mosaic

    def footprint(self, key: str) -> Any:
        import shapely

        col, row, width, height = parse_window_key(key)
        corners = [(col, row + height), (col + width, row + height), (col + width, row), (col, row)]
        return shapely.Polygon([self.transform @ corner for corner in corners])  # counter-clockwise for north-up

    def wgs84(self, key: str) -> dict:
        import shapely
        from rasterio.warp import transform_geom

        polygon = self.footprint(key)
        edge = max(abs(self.transform.a), abs(self.transform.e)) * max(parse_window_key(key)[2:]) / DENSIFY_POINTS
        return transform_geom(self.crs, WGS84, shapely.geometry.mapping(shapely.segmentize(polygon, edge)))

    def mosaic(self) -> tuple[int, int, Any]:
        if self.grid is None:
            raise ValueError("a mosaic needs the scene's grid")
        return self.grid.width, self.grid.height, self.transform

    def place(self, key: str) -> Placement:
        if self.grid is None:
            raise ValueError("a mosaic needs the scene's grid")
        return Placement(parse_window_key(key), self.grid.owned(key))
