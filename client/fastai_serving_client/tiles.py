"""Web-mercator tiles as chip-n-scale names them (`x-y-z`, XYZ/slippy-map numbering) and their bounds."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

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


def _latitude(y: float, z: int) -> float:
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / 2**z))))


def tile_bounds(tile: Tile) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees (WGS 84 longitude and latitude) of a web-mercator tile."""
    n = 2**tile.z
    west, east = tile.x / n * 360 - 180, (tile.x + 1) / n * 360 - 180
    return west, _latitude(tile.y + 1, tile.z), east, _latitude(tile.y, tile.z)


def tile_polygon(tile: Tile) -> dict:
    """The tile as a GeoJSON Polygon: the same square as chip-n-scale's (mercantile's), wound counter-clockwise as RFC 7946 asks."""
    west, south, east, north = tile_bounds(tile)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}
