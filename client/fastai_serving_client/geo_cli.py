"""predict-batch's areas and scenes: their flags, and the sources and destinations they choose.

Kept apart from cli.py so that the plain client never imports the geo extra: everything here
imports rasterio, shapely and the rest only once one of these flags (or a .gpkg or .tif output)
asks for them, and says what to install when they are missing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from . import defaults
from .geo import require_geo
from .predictor import Predictor
from .sinks import POSTGRES_SCHEMES, GeoJsonSink, Sink, open_sink
from .sources import Source, TileSource

MAP_SUFFIXES = (".gpkg",)
MOSAIC_SUFFIXES = (".tif", ".tiff")
SEGMENTATION = "segmentation"  # the task fastai-serving's metadata names
_WINDOW = re.compile(r"^(\d+)(?:x(\d+))?$")


def add_geo_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "areas and scenes (need the geo extra: pip install './client[geo]')",
        "--area with --zoom and --imagery, or --raster; results on the map: .geojson, .gpkg, postgresql:// "
        "(PostGIS geometries), or for a segmentation model a .tif mosaic (with --polygons)",
    )
    group.add_argument(
        "--area", type=Path, metavar="GEOJSON", help="polygons (WGS 84, RFC 7946): predict the XYZ tiles covering them"
    )
    group.add_argument("--zoom", type=int, metavar="Z", help="with --area: the tiles' zoom")
    group.add_argument(
        "--raster", metavar="PATH_OR_URL", help="a GeoTIFF or COG, local or http(s) (range reads): predict its windows"
    )
    group.add_argument(
        "--window",
        metavar="SIZE",
        help="window size in pixels, N or WxH (default: the model's input size where its metadata says it); "
        f"with --area and a .tif: each tile's pixels in the mosaic (default: the model's size, else {defaults.TILE_PIXELS})",
    )
    group.add_argument(
        "--overlap",
        type=int,
        default=defaults.WINDOW_OVERLAP,
        metavar="PIXELS",
        help="pixels neighbouring windows share (default: %(default)s)",
    )
    group.add_argument("--bands", type=int, nargs="+", metavar="N", help="the bands sent, from 1 (default: 1 2 3)")
    group.add_argument(
        "--scale",
        nargs=2,
        metavar=("MIN", "MAX"),
        help="map pixel values MIN..MAX to 0..255 (needed for 16-bit or float scenes)",
    )
    group.add_argument(
        "--polygons",
        metavar="DEST",
        help="with a .tif mosaic: its classes as polygons, into a .geojson or .gpkg file or a postgresql:// URL "
        "(table <table>_polygons)",
    )
    group.add_argument(
        "--simplify",
        type=float,
        default=defaults.POLYGON_SIMPLIFY,
        metavar="TOLERANCE",
        help="--polygons: simplify to this tolerance, in the CRS's units (default: %(default)s)",
    )
    group.add_argument(
        "--min-area",
        type=float,
        default=defaults.POLYGON_MIN_AREA,
        metavar="AREA",
        help="--polygons: drop polygons smaller than this, in the CRS's square units (default: %(default)s)",
    )
    group.add_argument(
        "--background",
        default=defaults.POLYGON_BACKGROUND,
        metavar="CLASS",
        help="--polygons: the class that gives no polygons (an index or a class name; none: every class does) (default: %(default)s)",
    )


def is_geo_run(args: argparse.Namespace) -> bool:
    """Whether this run uses an area, a scene, or an output only the geo extra writes."""
    out = args.out.lower()
    return bool(args.area or args.raster or args.polygons) or out.endswith(MAP_SUFFIXES + MOSAIC_SUFFIXES)


def check_geo_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors that need nothing installed: flags that do not go together."""
    if args.area and args.raster:
        parser.error("give --area or --raster, not both")
    if (args.area or args.raster) and (args.input or args.tiles):
        parser.error("give one source: an INPUT, --tiles, --area or --raster")
    if args.area and args.zoom is None:
        parser.error("--area needs --zoom, the zoom of the tiles that cover it")
    if args.zoom is not None and not args.area:
        parser.error("--zoom goes with --area")
    if args.area and not args.imagery:
        parser.error("--area needs --imagery, the XYZ template its tiles are downloaded from")
    if args.raster and args.imagery:
        parser.error("--imagery goes with --tiles or --area, not --raster")
    for flag in ("bands", "scale"):
        if getattr(args, flag) is not None and not args.raster:
            parser.error(f"--{flag} goes with --raster")
    if args.overlap != defaults.WINDOW_OVERLAP and not args.raster:
        parser.error("--overlap goes with --raster")
    if args.polygons and not args.out.lower().endswith(MOSAIC_SUFFIXES):
        parser.error("--polygons vectorizes a mosaic: give --out a .tif file too")
    if is_geo_run(args):
        try:
            require_geo(_geo_reason(args))
        except ValueError as error:
            parser.error(str(error))


def _geo_reason(args: argparse.Namespace) -> str:
    for flag in ("area", "raster", "polygons"):
        if getattr(args, flag):
            return f"--{flag}"
    return f"--out {args.out}"


def parse_window(text: str) -> tuple[int, int]:
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError(f"--window takes N or WIDTHxHEIGHT in pixels, such as 256 or 512x256, not {text!r}")
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def model_input_size(description: dict | None) -> tuple[int, int] | None:
    """The image size the model takes, where its metadata says it: `inputs[0].size`, [height, width] or N."""
    inputs = (description or {}).get("inputs")
    size = inputs[0].get("size") if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else None
    if isinstance(size, (int, float)) and size >= 1:
        return int(size), int(size)
    if isinstance(size, list) and len(size) == 2 and all(isinstance(side, (int, float)) and side >= 1 for side in size):
        return int(size[1]), int(size[0])
    return None


def window_of(args: argparse.Namespace, parser: argparse.ArgumentParser, description: dict | None) -> tuple[int, int]:
    if args.window:
        try:
            return parse_window(args.window)
        except ValueError as error:
            parser.error(str(error))
    size = model_input_size(description)
    if size is None:
        parser.error("the server's metadata does not say the model's input size: give --window, e.g. --window 256")
    return size


def geo_source(args: argparse.Namespace, parser: argparse.ArgumentParser, predictor: Predictor) -> Source | None:
    """The area's tiles or the scene's windows; None when neither --area nor --raster is given."""
    from .areas import AreaSource
    from .scenes import Scene, SceneSource, WindowGrid, parse_scale

    try:
        if args.area:
            if not args.area.is_file():
                parser.error(f"--area {args.area}: no such file")
            return AreaSource(args.area, args.zoom, args.imagery)
        if args.raster:
            scale = parse_scale(args.scale)
            scene = Scene(args.raster, list(args.bands or []), scale)
            window = window_of(args, parser, predictor.description())
            return SceneSource(scene, WindowGrid(scene.width, scene.height, window, args.overlap))
    except ValueError as error:
        parser.error(str(error))
    return None


def places_of(
    source: Source, args: argparse.Namespace, parser: argparse.ArgumentParser, description: dict | None
) -> Any:
    """Where the source's keys lie on the map (places.py), or None for a folder or a list of images."""
    from .areas import AreaSource
    from .places import TilePlaces, WindowPlaces
    from .scenes import SceneSource

    if isinstance(source, SceneSource):
        if source.scene.crs is None:
            parser.error(f"--raster {source.scene.path} has no CRS: its windows have no place on the map")
        return WindowPlaces(source.scene.crs, source.scene.transform, source.grid)
    if isinstance(source, AreaSource):
        size = parse_window(args.window) if args.window else model_input_size(description)
        return TilePlaces(source.cover.tile_range(), source.zoom, size[0] if size else defaults.TILE_PIXELS)
    if isinstance(source, TileSource):
        return TilePlaces()
    return None


def background_of(text: str, classes: list[str] | None, parser: argparse.ArgumentParser) -> frozenset[int]:
    if text.lower() == "none":
        return frozenset()
    if text.isdigit():
        return frozenset({int(text)})
    if classes and text in classes:
        return frozenset({classes.index(text)})
    parser.error(
        f"--background {text}: give a class index, none, or one of the model's classes ({classes or 'unknown'})"
    )
    raise AssertionError("unreachable")


def geo_sink(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    source: Source,
    predictor: Predictor,
    threshold: tuple[int, float] | None,
) -> Sink:
    """The destination for an area, a scene, or a .gpkg or .tif output (ValueError, SinkError as open_sink)."""
    from .areas import AreaSource
    from .map_sinks import GeoPackageSink, PostgisSink
    from .mosaic import MosaicSink
    from .places import srid_of
    from .polygons import PolygonOptions, PolygonWriter
    from .scenes import SceneSource

    out = args.out
    suffix = Path(out).suffix.lower()
    description = predictor.description()
    places = places_of(source, args, parser, description)
    key_name = "window" if isinstance(source, SceneSource) else "tile"
    task = (description or {}).get("task")
    mosaic = suffix in MOSAIC_SUFFIXES and not out.startswith(POSTGRES_SCHEMES)
    if places is None and (mosaic or suffix in MAP_SUFFIXES):
        parser.error(f"--out {out}: its features need places on the map: give --tiles, --area or --raster")
    if task == SEGMENTATION and not (mosaic or suffix in (".jsonl", ".csv")):
        parser.error(f"--out {out}: the model is a segmentation model: give a .tif for its mosaic (and --polygons)")
    if mosaic and task is not None and task != SEGMENTATION:
        parser.error(f"--out {out}: a .tif mosaic holds a segmentation model's masks; this model's task is {task}")
    if threshold is not None and suffix != ".geojson":
        parser.error("--threshold applies to a .geojson output only (chip-n-scale's convert-geojson)")
    if mosaic:
        if isinstance(source, TileSource):
            parser.error("a .tif mosaic of tiles needs --area (a tile list gives no extent to lay them in)")
        classes = predictor.class_names() or []
        writer = None
        if args.polygons:
            options = PolygonOptions(
                args.simplify, args.min_area, background_of(args.background, classes, parser), classes
            )
            writer = PolygonWriter(args.polygons, args.table, places.crs, options)
        return MosaicSink(Path(out), places, classes, writer)
    if suffix in MAP_SUFFIXES:
        return GeoPackageSink(Path(out), places, args.table, key_name)
    if out.startswith(POSTGRES_SCHEMES) and isinstance(source, (AreaSource, SceneSource)):
        return PostgisSink(out, args.table, places, srid_of(places.crs, key_name + "s' scene"))
    if suffix == ".geojson" and isinstance(source, SceneSource):
        return GeoJsonSink(Path(out), threshold, places.wgs84, key_name)
    return open_sink(out, table=args.table, threshold=threshold, tiles=isinstance(source, (TileSource, AreaSource)))


def scene_reader(source: Source) -> Any:
    """The window reader that takes the fetcher's place for a scene; None for every other source."""
    from .scenes import SceneSource, WindowReader

    return WindowReader(source.scene) if isinstance(source, SceneSource) else None
