"""Web-mercator tiles as chip-n-scale names them (`x-y-z`, XYZ/slippy-map numbering): keys, URLs and bounds.

The tile arithmetic is mercantile's (the library chip-n-scale's own tools use), so a tile's square
here is exactly the one its tile list and imagery server mean.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import mercantile

_TILE = re.compile(r"^\s*(\d+)-(\d+)-(\d+)\s*$")
MAX_ZOOM = 30


class Tile(NamedTuple):
    x: int
    y: int
    z: int

    @property
    def key(self) -> str:
        return f"{self.x}-{self.y}-{self.z}"


def parse_tile(text: str) -> Tile:
    """`x-y-z` as a Tile; ValueError says what is wrong with the line."""
    match = _TILE.match(text)
    if not match:
        raise ValueError(f"{text.strip()!r} is not an x-y-z tile")
    x, y, z = (int(part) for part in match.groups())
    if z > MAX_ZOOM:
        raise ValueError(f"tile {text.strip()}: zoom {z} is above {MAX_ZOOM}")
    if x >= 2**z or y >= 2**z:
        raise ValueError(f"tile {text.strip()}: x and y must be below 2^z = {2**z}")
    return Tile(x, y, z)


def tile_url(template: str, tile: Tile) -> str:
    """An XYZ imagery template with `{x}`, `{y}` and `{z}` filled in (other braces are left alone)."""
    return template.replace("{x}", str(tile.x)).replace("{y}", str(tile.y)).replace("{z}", str(tile.z))


def check_template(template: str) -> None:
    missing = [name for name in ("{x}", "{y}", "{z}") if name not in template]
    if missing:
        raise ValueError(f"the imagery template {template!r} lacks {', '.join(missing)}")
    if not template.startswith(("http://", "https://")):
        raise ValueError(f"the imagery template {template!r} is not an http(s) URL")


def tile_bounds(tile: Tile) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees (WGS 84 longitude and latitude) of a web-mercator tile."""
    return tuple(mercantile.bounds(*tile))


def tile_xy_bounds(tile: Tile) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in web-mercator metres (EPSG:3857), where a tile is an exact square."""
    return tuple(mercantile.xy_bounds(*tile))


def tile_polygon(tile: Tile) -> dict:
    """The tile as a GeoJSON Polygon: the same square as chip-n-scale's (mercantile's), wound counter-clockwise as RFC 7946 asks."""
    west, south, east, north = tile_bounds(tile)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}
