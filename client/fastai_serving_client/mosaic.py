"""A segmentation model's masks laid into one georeferenced raster: a Cloud-Optimized GeoTIFF of class indices.

Memory stays bounded whatever the scene's size: each answer's mask is written straight to disk,
row by row, into a raw file of one byte per pixel (`<out>.partial`, filled with the nodata value
255 when made), which a small VRT beside it (`<out>.partial.vrt`) georeferences, so GDAL and QGIS
read the mosaic while it grows. Each window keeps only its centre where windows overlap
(scenes.py's `owned_spans`); a mask the model answered at another size is resized to its window
(nearest neighbour: class indices are not blended). After each commit the raw file is fsync'ed,
then the keys are appended to `<out>.done.jsonl` and fsync'ed: a key listed there has its pixels
on disk, so a killed run resumes with every window written once. At the end of every run (an
interrupted one too) the COG is written from the VRT by rio-cogeo, window by window, with
nearest-neighbour overviews; with --polygons, its classes are then vectorized (polygons.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from . import defaults
from .polygons import PolygonWriter, vectorize
from .sinks import LineFileSink, SinkError

NODATA = defaults.MOSAIC_NODATA
FILL_CHUNK = 16 * 2**20  # bytes written at a time while filling a new raw file with nodata
COG_BLOCK = 256  # the COG's tiles: small enough that any mosaic wider than one gets overviews (rio-cogeo's advice)


class DoneKeys(LineFileSink):
    """`<out>.done.jsonl`: {"key": ...} a line, each written only once its pixels are on disk."""

    kind = "mosaic journal"

    def encode(self, key: str, prediction: Any) -> str:
        return json.dumps({"key": key}) + "\n"

    def decode_key(self, line: str) -> str:
        key = json.loads(line)["key"]
        if not isinstance(key, str):
            raise ValueError("its key is not a string")
        return key


def vrt_text(width: int, height: int, crs: Any, transform: Any, raw_name: str) -> str:
    """A VRT that reads the raw file as a georeferenced one-band Byte raster."""
    srs = escape(crs.to_wkt()) if crs else ""
    geotransform = ", ".join(repr(value) for value in transform.to_gdal())
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f"  <SRS>{srs}</SRS>\n  <GeoTransform>{geotransform}</GeoTransform>\n"
        '  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">\n'
        f"    <NoDataValue>{NODATA}</NoDataValue>\n"
        f'    <SourceFilename relativetoVRT="1">{escape(raw_name)}</SourceFilename>\n'
        f"    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{width}</LineOffset>\n"
        "  </VRTRasterBand>\n</VRTDataset>\n"
    )


def mask_array(key: str, prediction: Any, height: int, width: int) -> Any:
    """The answered mask as uint8 class indices of (height, width): resized by nearest neighbour where it differs."""
    import numpy as np

    try:
        mask = np.asarray(prediction)
    except ValueError as error:
        raise ValueError(f"{key}: the answer is not a mask (a ragged list)") from error
    if mask.ndim != 2 or mask.size == 0 or not np.issubdtype(mask.dtype, np.number):
        raise ValueError(
            f"a .tif mosaic needs a segmentation model's class-index masks; {key} was answered "
            f"{json.dumps(prediction)[:80]}"
        )
    if mask.min() < 0 or mask.max() >= NODATA:
        raise ValueError(f"{key}: class indices must be 0 to {NODATA - 1} in a mosaic")
    mask = mask.astype(np.uint8)
    if mask.shape != (height, width):
        rows = np.arange(height) * mask.shape[0] // height
        columns = np.arange(width) * mask.shape[1] // width
        mask = mask[rows[:, None], columns[None, :]]
    return mask


class MosaicSink:
    """`.tif`: the mosaic of a scene's (or an area's) masks; `places` says where each key lies (places.py)."""

    def __init__(self, path: Path, places: Any, classes: list[str] | None, polygons: PolygonWriter | None) -> None:
        self.path, self.places, self.classes, self.polygons = path, places, classes, polygons
        self.width, self.height, self.transform = places.mosaic()
        if self.width * self.height > defaults.MOSAIC_MAX_PIXELS:
            raise ValueError(
                f"a {self.width}x{self.height} mosaic is over {defaults.MOSAIC_MAX_PIXELS / 2**30:g} Gpixels: "
                "split the area or the scene, or lower the zoom"
            )
        self.crs = _crs(places.crs)
        self.raw_path = path.with_name(path.name + ".partial")
        self.vrt_path = path.with_name(path.name + ".partial.vrt")
        self.journal = DoneKeys(path.with_name(path.name + ".done.jsonl"), path.with_name(path.name + ".failed.jsonl"))
        self.where_failures = self.journal.where_failures
        self.repaired_bytes = self.journal.repaired_bytes
        self.done_keys = self.journal.done_keys
        self.earlier_failures = self.journal.earlier_failures
        self.record_failures = self.journal.record_failures
        try:
            self._open_raw()
        except BaseException:
            self.journal.close()
            raise

    def _open_raw(self) -> None:
        expected = vrt_text(self.width, self.height, self.crs, self.transform, self.raw_path.name)
        if self.raw_path.exists():
            if not self.vrt_path.exists() or self.vrt_path.read_text() != expected:
                raise SinkError(
                    f"{self.raw_path} was started for another scene, area or grid: move it and "
                    f"{self.journal.path} away, or give another --out"
                )
        else:
            if self.journal.done_keys():
                raise SinkError(f"{self.journal.path} lists windows, but {self.raw_path} is gone: move the list away")
            self._make_raw()
            self.vrt_path.write_text(expected)
        self.fd = os.open(self.raw_path, os.O_RDWR)

    def _make_raw(self) -> None:
        """The raw file, every pixel nodata, made under another name and renamed: never half filled."""
        temporary = self.raw_path.with_name(self.raw_path.name + ".tmp")
        total = self.width * self.height
        chunk = bytes([NODATA]) * min(FILL_CHUNK, total)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            while written < total:
                written += os.write(fd, chunk[: total - written])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.raw_path)

    def commit(self, results: list[tuple[str, Any]]) -> None:
        if not results:
            return
        for key, prediction in results:
            place = self.places.place(key)
            col, row, width, height = place.window
            kept_col, kept_row, kept_width, kept_height = place.kept
            mask = mask_array(key, prediction, height, width)
            kept = mask[kept_row - row : kept_row - row + kept_height, kept_col - col : kept_col - col + kept_width]
            for offset, line in enumerate(kept):
                os.pwrite(self.fd, line.tobytes(), (kept_row + offset) * self.width + kept_col)
        os.fsync(self.fd)  # the pixels first, then the keys that say they are there
        self.journal.commit(results)

    def close(self) -> str:
        self.journal.close()
        os.close(self.fd)
        done = len(self.journal.done_keys())
        self.write_cog()
        note = f"wrote {self.path}: a {self.width}x{self.height} mosaic of {done} {self.places.noun} (COG, nodata {NODATA})"
        if self.polygons is not None:
            written = self.polygons.write(vectorize(self.path, self.polygons.options))
            note += f"; {written} polygons in {self.polygons.describe()}"
        return note

    def write_cog(self) -> None:
        from rio_cogeo.cogeo import cog_translate
        from rio_cogeo.profiles import cog_profiles

        temporary = self.path.with_name(self.path.name + ".tmp.tif")
        profile = cog_profiles.get("deflate") | {"blockxsize": COG_BLOCK, "blockysize": COG_BLOCK}
        tags = {"classes": json.dumps(self.classes)} if self.classes else {}
        cog_translate(
            str(self.vrt_path), str(temporary), profile, nodata=NODATA, overview_resampling="nearest",
            in_memory=False, quiet=True, additional_cog_metadata=tags, use_cog_driver=False,
        )  # fmt: skip
        os.replace(temporary, self.path)

    def describe(self) -> str:
        return f"{self.path} (a {self.width}x{self.height} COG mosaic; progress in {self.journal.path})"


def _crs(crs: Any) -> Any:
    from rasterio.crs import CRS

    return CRS.from_user_input(crs) if crs else None
