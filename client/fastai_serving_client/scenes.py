"""Scenes in: a GeoTIFF or Cloud-Optimized GeoTIFF, local or over http(s), read window by window with rasterio.

The scene is cut into windows of the model's input size, `overlap` pixels shared between
neighbours; the last window of a row or column is moved back to end at the scene's edge, so every
window is whole (a scene smaller than a window is one window of its own size). A window's key
is `COL-ROW-WIDTHxHEIGHT`, its offset and size in pixels: stable across runs, so a run resumes and
shards as any other source, and enough to find the window's footprint again. Each window is read
when its turn comes (its bands only; over http(s), GDAL's range reads of just those bytes), scaled
to 8 bits when asked, and sent as a PNG: lossless, whatever the model sees is the scene's pixels.
A window whose pixels are all nodata (the scene's nodata value or mask) is skipped and counted.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .fetch import InputFailed, InputSkipped

_KEY = re.compile(r"^(\d+)-(\d+)-(\d+)x(\d+)$")
# GDAL over http(s): no directory listing on open (one request instead of many), and a cache of the blocks read.
REMOTE_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "VSI_CACHE": "TRUE", "GDAL_HTTP_MULTIRANGE": "YES"}
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is several times faster to write than the default 6


def window_key(col: int, row: int, width: int, height: int) -> str:
    return f"{col}-{row}-{width}x{height}"


def parse_window_key(key: str) -> tuple[int, int, int, int]:
    """(col, row, width, height) of a window key; ValueError for anything else."""
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a scene window (COL-ROW-WIDTHxHEIGHT)")
    col, row, width, height = (int(part) for part in match.groups())
    if width < 1 or height < 1:
        raise ValueError(f"window {key}: its size must be at least 1x1")
    return col, row, width, height


def offsets(length: int, size: int, overlap: int) -> list[int]:
    """Where windows of `size` start along an axis of `length`, `overlap` shared, the last one ending at the edge."""
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def owned_spans(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """The part of the axis each window keeps in a mosaic: from the middle of its overlap with the one before
    to the middle of its overlap with the one after, so each pixel comes from the window it is most central in."""
    ends = [min(start + size, length) for start in starts]
    cuts = [0] + [(starts[index] + ends[index - 1]) // 2 for index in range(1, len(starts))] + [length]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


@dataclass(frozen=True)
class WindowGrid:
    """The windows of a `width` x `height` scene: `window` (width, height) pixels, `overlap` pixels shared."""

    width: int
    height: int
    window: tuple[int, int]
    overlap: int = 0

    def __post_init__(self) -> None:
        if min(self.window) < 1:
            raise ValueError(f"--window {self.window_text}: must be 1 or more")
        if not 0 <= self.overlap < min(self.window):
            raise ValueError(f"--overlap {self.overlap}: must be at least 0 and below the window ({self.window_text})")

    @property
    def window_text(self) -> str:
        return f"{self.window[0]}x{self.window[1]}"

    @cached_property
    def columns(self) -> list[int]:
        return offsets(self.width, self.window[0], self.overlap)

    @cached_property
    def rows(self) -> list[int]:
        return offsets(self.height, self.window[1], self.overlap)

    @cached_property
    def _kept_columns(self) -> dict[int, tuple[int, int]]:
        return dict(zip(self.columns, owned_spans(self.columns, self.window[0], self.width), strict=True))

    @cached_property
    def _kept_rows(self) -> dict[int, tuple[int, int]]:
        return dict(zip(self.rows, owned_spans(self.rows, self.window[1], self.height), strict=True))

    def keys(self) -> Iterator[str]:
        """Row by row, left to right (the order a scene's strips and tiles lie on disk)."""
        width, height = min(self.window[0], self.width), min(self.window[1], self.height)
        columns = self.columns
        for row in self.rows:
            for col in columns:
                yield window_key(col, row, width, height)

    def count(self) -> int:
        return len(self.columns) * len(self.rows)

    def owned(self, key: str) -> tuple[int, int, int, int]:
        """(col, row, width, height) of the part of the window `key` keeps in a mosaic."""
        col, row, _, _ = parse_window_key(key)
        if col not in self._kept_columns or row not in self._kept_rows:
            raise ValueError(
                f"window {key} is not one of this grid's (--window {self.window_text}, --overlap {self.overlap})"
            )
        (left, right), (top, bottom) = self._kept_columns[col], self._kept_rows[row]
        return left, top, right - left, bottom - top


def parse_scale(values: list[str] | None) -> tuple[float, float] | None:
    if values is None:
        return None
    try:
        low, high = float(values[0]), float(values[1])
    except ValueError as error:
        raise ValueError(f"--scale takes two numbers, MIN MAX, not {' '.join(values)}") from error
    if not high > low:
        raise ValueError(f"--scale {low:g} {high:g}: MAX must be above MIN")
    return low, high


def to_8_bits(pixels: Any, scale: tuple[float, float] | None) -> Any:
    """uint8 pixels: as they are, or mapped linearly from [MIN, MAX] to [0, 255] and clipped (--scale)."""
    import numpy as np

    if scale is None:
        return pixels
    low, high = scale
    scaled = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def encode_png(pixels: Any) -> bytes:
    """(bands, height, width) uint8 pixels as a PNG: one band grey, three RGB, four RGBA."""
    from PIL import Image

    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def is_remote(path: str) -> bool:
    return path.startswith(("http://", "https://"))


@dataclass
class Scene:
    """A raster's size, georeferencing and the bands and scaling predict-batch reads it with."""

    path: str
    bands: list[int]
    scale: tuple[float, float] | None
    width: int = field(init=False)
    height: int = field(init=False)
    crs: Any = field(init=False)
    transform: Any = field(init=False)
    dtype: str = field(init=False)

    def __post_init__(self) -> None:
        dataset = open_scene(self.path)
        with dataset:
            self.width, self.height = dataset.width, dataset.height
            self.crs, self.transform = dataset.crs, dataset.transform
            if not self.bands:
                self.bands = [1, 2, 3] if dataset.count >= 3 else [1]
            missing = [band for band in self.bands if not 1 <= band <= dataset.count]
            if missing:
                raise ValueError(f"--raster {self.path} has bands 1 to {dataset.count}, not {missing}")
            if len(self.bands) not in (1, 3, 4):
                raise ValueError(f"--bands {self.bands}: a PNG holds 1 (grey), 3 (RGB) or 4 (RGBA) bands")
            dtypes = {dataset.dtypes[band - 1] for band in self.bands}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
        if self.dtype != "uint8" and self.scale is None:
            raise ValueError(
                f"--raster {self.path}: its bands are {self.dtype}, not 8-bit: give --scale MIN MAX to map "
                "[MIN, MAX] to 0-255 (e.g. --scale 0 10000 for 16-bit reflectance)"
            )

    def describe(self) -> str:
        bands = ",".join(map(str, self.bands))
        scale = f", {self.dtype} scaled {self.scale[0]:g}-{self.scale[1]:g}" if self.scale else ""
        return f"scene {self.path} ({self.width}x{self.height}, {self.crs or 'no CRS'}, bands {bands}{scale})"


def open_scene(path: str) -> Any:
    """rasterio's dataset for a local path or an http(s) URL (read with GDAL's range requests)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if is_remote(path):
        for name, value in REMOTE_GDAL_OPTIONS.items():
            os.environ.setdefault(name, value)  # GDAL reads its options from the environment too, in every thread
    try:
        return rasterio.open(path)
    except RasterioIOError as error:
        raise ValueError(f"--raster {path}: cannot open it ({error})") from error


@dataclass
class SceneSource:
    """--raster: the scene's windows; key = `COL-ROW-WIDTHxHEIGHT`. Its reader (`WindowReader`) fetches them."""

    scene: Scene
    grid: WindowGrid
    noun: str = "windows"
    unique = True  # keys never repeat

    def keys(self) -> Iterator[str]:
        return self.grid.keys()

    def count(self) -> int:
        return self.grid.count()

    def locate(self, key: str) -> str:
        parse_window_key(key)
        return key

    def describe(self) -> str:
        overlap = f", overlap {self.grid.overlap}" if self.grid.overlap else ""
        return f"{self.scene.describe()} in {self.grid.window_text} windows{overlap}"


class WindowReader:
    """Reads windows for many threads at once, as `Fetcher` reads files: one open dataset per thread
    (a rasterio dataset is not shared between threads)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self._local = threading.local()

    def _dataset(self) -> Any:
        if not hasattr(self._local, "dataset"):
            self._local.dataset = open_scene(self.scene.path)
        return self._local.dataset

    def fetch(self, key: str) -> bytes:
        """The window's pixels as a PNG; InputSkipped when all of it is nodata, InputFailed when it cannot be read."""
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        col, row, width, height = parse_window_key(key)
        window = Window(col, row, width, height)
        try:
            dataset = self._dataset()
            masks = dataset.read_masks(self.scene.bands, window=window)
            if not masks.any():
                raise InputSkipped("all nodata")
            pixels = to_8_bits(dataset.read(self.scene.bands, window=window), self.scene.scale)
        except RasterioError as error:
            raise InputFailed(f"cannot read window {key} of {self.scene.path}: {error}") from error
        pixels[masks == 0] = 0  # nodata pixels inside a window the model sees: black, whatever the scene held there
        return encode_png(pixels)
