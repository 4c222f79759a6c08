"""Scenes for predict-batch's area and scene tests and benchmarks: rasters with known transforms and CRSs, a
pattern drawn into them that a small segmentation model learns, and a loopback file server that answers
HTTP range requests, as a COG's host does.

A pattern is bright shapes (rectangles and discs, every band near white) on dark noise; its truth is
the boolean mask of the shapes, so a model's polygons can be compared with what was drawn.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

DARK, BRIGHT = (0, 80), (200, 256)  # pixel value ranges of the background noise and of the shapes
UTM_CRS = "EPSG:32631"  # UTM zone 31N (Paris, Barcelona)
WEB_MERCATOR = "EPSG:3857"


@dataclass(frozen=True)
class Shape:
    kind: str  # "rectangle" or "disc"
    row: int  # rectangle: top; disc: centre
    col: int  # rectangle: left; disc: centre
    height: int = 0  # rectangle
    width: int = 0  # rectangle
    radius: int = 0  # disc

    def mask(self, height: int, width: int) -> np.ndarray:
        rows, cols = np.ogrid[:height, :width]
        if self.kind == "disc":
            return (rows - self.row) ** 2 + (cols - self.col) ** 2 <= self.radius**2
        inside_rows = (rows >= self.row) & (rows < self.row + self.height)
        return inside_rows & (cols >= self.col) & (cols < self.col + self.width)


def random_shapes(height: int, width: int, count: int, rng: np.random.Generator, largest: int) -> list[Shape]:
    shapes = []
    for _ in range(count):
        if rng.random() < 0.5:
            side_h, side_w = (int(v) for v in rng.integers(largest // 4, largest, 2))
            row, col = int(rng.integers(0, max(1, height - side_h))), int(rng.integers(0, max(1, width - side_w)))
            shapes.append(Shape("rectangle", row, col, height=side_h, width=side_w))
        else:
            radius = int(rng.integers(largest // 8, largest // 2))
            shapes.append(Shape("disc", int(rng.integers(0, height)), int(rng.integers(0, width)), radius=radius))
    return shapes


def draw(height: int, width: int, shapes: list[Shape], bands: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bands, height, width) uint8 pixels: the shapes bright on dark noise; and the shapes' boolean mask."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), dtype=bool)
    for shape in shapes:
        truth |= shape.mask(height, width)
    pixels = rng.integers(*DARK, size=(bands, height, width), dtype=np.uint8)
    pixels[:, truth] = rng.integers(*BRIGHT, size=(bands, int(truth.sum())), dtype=np.uint8)
    return pixels, truth


# The scene the end-to-end tests and docs/batch.md draw: shapes of several sizes, some crossing window edges.
SCENE_SHAPES = [
    Shape("rectangle", 40, 60, height=120, width=200),
    Shape("disc", 300, 420, radius=70),
    Shape("rectangle", 250, 100, height=60, width=60),
    Shape("disc", 120, 560, radius=45),
    Shape("rectangle", 420, 560, height=50, width=180),
]
SCENE_SIZE = (512, 768)  # (height, width)


def write_scene(
    path: Path,
    pixels: np.ndarray,
    crs: str,
    transform: Any,
    *,
    nodata: float | None = None,
    cog: bool = False,
    block: int = 256,
) -> Path:
    """A GeoTIFF of `pixels` (bands, height, width) with this CRS and transform; a tiled COG when `cog`."""
    import rasterio

    bands, height, width = pixels.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": pixels.dtype.name,
        "crs": crs, "transform": transform, "nodata": nodata,
    }  # fmt: skip
    if width >= block and height >= block:
        profile |= {"tiled": True, "blockxsize": block, "blockysize": block}
    if not cog:
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(pixels)
        return path
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    plain = path.with_name(path.stem + ".plain.tif")
    with rasterio.open(plain, "w", **profile) as dataset:
        dataset.write(pixels)
    cog_translate(str(plain), str(path), cog_profiles.get("deflate"), quiet=True, in_memory=False)
    plain.unlink()
    return path


def utm_transform(pixel_m: float = 0.5) -> Any:
    """North-up, `pixel_m` metres a pixel, its top-left corner near Paris in UTM 31N."""
    from rasterio.transform import from_origin

    return from_origin(448_000.0, 5_412_000.0, pixel_m, pixel_m)


def mercator_transform(pixel_m: float = 0.6) -> Any:
    """North-up in web mercator, `pixel_m` metres a pixel, its top-left corner near Barcelona."""
    from rasterio.transform import from_origin

    return from_origin(240_000.0, 5_070_000.0, pixel_m, pixel_m)


# --- A loopback static file server that answers Range requests, as object stores and CDNs do ----------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class RangeFileServer:
    """Serves the files of a folder at http://127.0.0.1:PORT/NAME, with single byte ranges; counts range requests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ranges = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _file(self) -> Path | None:
                path = (server.folder / self.path.lstrip("/").split("?")[0]).resolve()
                return path if path.is_file() and server.folder.resolve() in path.parents else None

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
                path = self._file()
                self.send_response(200 if path else 404)
                self.send_header("Content-Length", str(path.stat().st_size if path else 0))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                path = self._file()
                if path is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and (match.group(1) or match.group(2)):
                    if match.group(1):
                        start = int(match.group(1))
                        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
                    else:  # a suffix range: the last N bytes
                        start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
                    body = data[start : end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                    with server._lock:
                        server.ranges += 1
                else:
                    body = data
                    self.send_response(200)
                with server._lock:
                    server.bytes_sent += len(body)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def __enter__(self) -> RangeFileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def xyz_tiles(scene: Path, keys: list[str], pixels: int = 256) -> dict[str, bytes]:
    """PNG tiles of a web-mercator scene, as an XYZ imagery server would cut them: key `x-y-z` -> bytes.

    Each tile is the scene resampled (nearest) onto the tile's square; what lies outside the scene is black.
    """
    import io

    import mercantile
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.vrt import WarpedVRT

    tiles = {}
    with rasterio.open(scene) as dataset:
        for key in keys:
            x, y, z = (int(part) for part in key.split("-"))
            bounds = mercantile.xy_bounds(x, y, z)
            transform = from_bounds(*bounds, pixels, pixels)
            with WarpedVRT(
                dataset, crs=dataset.crs, transform=transform, width=pixels, height=pixels,
                resampling=Resampling.nearest, nodata=0,
            ) as tile:  # fmt: skip
                data = tile.read()
            out = io.BytesIO()
            Image.fromarray(data.transpose(1, 2, 0)).save(out, format="PNG")
            tiles[key] = out.getvalue()
    return tiles
