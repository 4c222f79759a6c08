"""predict-batch's areas and scenes, in-process: the tiles an area gives, the windows a scene gives and where they
lie, what each window sends, the mosaic and its polygons, the GeoPackage, and the flags' usage errors.

Rasters are made here with known transforms and CRSs (harness/rasters.py: a UTM scene and a web-mercator one);
the references are the geospatial libraries' own arithmetic (rasterio's transforms, mercantile's and
supermercado's tiles, GDAL reading what was written through pyogrio and rasterio).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import mercantile
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import mapping, shape
from supermercado import burntiles

from fastai_serving_client import cli
from fastai_serving_client.areas import AreaCover, read_area
from fastai_serving_client.fetch import InputSkipped
from fastai_serving_client.geo_cli import model_input_size
from fastai_serving_client.map_sinks import GeoPackageSink
from fastai_serving_client.mosaic import NODATA, MosaicSink
from fastai_serving_client.places import TilePlaces, WindowPlaces
from fastai_serving_client.polygons import PolygonOptions, PolygonWriter, vectorize
from fastai_serving_client.scenes import Scene, WindowGrid, WindowReader, offsets, owned_spans
from fastai_serving_client.tiles import parse_tile
from harness.rasters import (
    SCENE_SHAPES,
    UTM_CRS,
    WEB_MERCATOR,
    Shape,
    draw,
    mercator_transform,
    utm_transform,
    write_scene,
)

# An irregular polygon over Paris, and a multipolygon with a hole, in longitude and latitude.
PARIS = shapely.Polygon([(2.22, 48.80), (2.45, 48.82), (2.41, 48.90), (2.31, 48.913), (2.25, 48.86)])
WITH_HOLE = shapely.MultiPolygon(
    [
        shapely.Polygon(
            [(2.0, 41.3), (2.3, 41.3), (2.3, 41.5), (2.0, 41.5)],
            [[(2.1, 41.35), (2.2, 41.35), (2.2, 41.45), (2.1, 41.4)]],
        ),
        shapely.Polygon([(2.4, 41.6), (2.5, 41.62), (2.45, 41.7)]),
    ]
)


def geojson_file(folder: Path, *geometries: dict, name: str = "area.geojson") -> Path:
    features = [{"type": "Feature", "properties": {}, "geometry": geometry} for geometry in geometries]
    path = folder / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# --- Areas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("area", [PARIS, WITH_HOLE], ids=["polygon", "multipolygon-with-a-hole"])
@pytest.mark.parametrize("zoom", [11, 14, 16])
def test_an_areas_tiles_are_supermercados_for_the_same_polygon_and_zoom(area, zoom):
    polygons = [{"geometry": mapping(polygon)} for polygon in getattr(area, "geoms", [area])]  # it takes Polygons
    expected = {tuple(int(v) for v in tile) for tile in burntiles.burn(polygons, zoom)}
    assert {tuple(tile) for tile in AreaCover(area, zoom).tiles()} == expected


def test_a_longitude_latitude_rectangles_tiles_are_mercantiles_tiles_of_its_bounds():
    west, south, east, north = 2.213, 48.791, 2.467, 48.905
    expected = {tuple(tile) for tile in mercantile.tiles(west, south, east, north, 15)}
    assert {tuple(tile) for tile in AreaCover(shapely.box(west, south, east, north), 15).tiles()} == expected


def test_an_areas_tiles_come_once_each_and_are_counted_without_being_listed():
    cover = AreaCover(PARIS, 16)
    tiles = list(cover.tiles())
    assert len(set(tiles)) == len(tiles) == cover.count() > 500


def test_an_areas_keys_are_chip_n_scales_x_y_z_tiles():
    keys = [tile.key for tile in AreaCover(PARIS, 12).tiles()]
    assert keys and all(parse_tile(key).key == key and key.endswith("-12") for key in keys)


def test_an_areas_tile_range_spans_exactly_its_tiles():
    cover = AreaCover(WITH_HOLE, 14)
    tiles = list(cover.tiles())
    assert cover.tile_range() == (
        min(t.x for t in tiles), min(t.y for t in tiles), max(t.x for t in tiles), max(t.y for t in tiles)
    )  # fmt: skip


def test_an_area_reads_every_feature_and_bare_geometries(tmp_path):
    path = geojson_file(tmp_path, mapping(PARIS), mapping(WITH_HOLE))
    area, count = read_area(path)
    assert count == 2 and area.equals(shapely.union_all([PARIS, WITH_HOLE]))
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps(mapping(PARIS)))
    assert read_area(bare)[0].equals(PARIS)


def test_an_area_holding_a_line_is_refused_naming_the_feature(tmp_path):
    path = geojson_file(tmp_path, mapping(PARIS), {"type": "LineString", "coordinates": [[2, 48], [3, 49]]})
    with pytest.raises(ValueError, match=r"feature 1 is a LineString: an area is made of Polygons and MultiPolygons"):
        read_area(path)


def test_a_self_intersecting_area_is_refused_with_where_it_crosses(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[2, 48], [3, 49], [3, 48], [2, 49], [2, 48]]]}
    with pytest.raises(ValueError, match=r"feature 0 is an invalid Polygon \(Self-intersection"):
        read_area(geojson_file(tmp_path, bowtie))


def test_an_area_in_another_crs_is_refused(tmp_path):
    path = tmp_path / "utm.geojson"
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": []}))
    with pytest.raises(ValueError, match="give the area in WGS 84"):
        read_area(path)


# --- Scenes: windows, footprints, what is sent --------------------------------------------------------------


def test_windows_cover_the_axis_overlapping_and_the_last_ends_at_the_edge():
    assert offsets(1000, 256, 32) == [0, 224, 448, 672, 744]
    assert offsets(256, 256, 0) == [0]
    assert offsets(100, 256, 0) == [0]


@pytest.mark.parametrize("length, size, overlap", [(1000, 256, 32), (1000, 256, 0), (777, 100, 37), (90, 100, 10)])
def test_the_kept_parts_of_windows_cover_each_pixel_once_from_the_window_it_is_most_central_in(length, size, overlap):
    starts = offsets(length, size, overlap)
    spans = owned_spans(starts, size, length)
    assert [start for start, _ in spans][0] == 0 and spans[-1][1] == length
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # no gap, no pixel twice
    for start, (begin, end) in zip(starts, spans, strict=True):
        assert start <= begin < end <= min(start + size, length)
    for pixel in range(length):  # the window a pixel comes from is one whose centre is nearest it
        index = next(i for i, (begin, end) in enumerate(spans) if begin <= pixel < end)
        nearest = min(abs(s + min(size, length) / 2 - pixel - 0.5) for s in starts)
        assert abs(starts[index] + min(size, length) / 2 - pixel - 0.5) <= nearest + 1


def test_a_scene_smaller_than_a_window_is_one_window_of_its_own_size():
    assert list(WindowGrid(100, 60, (256, 256)).keys()) == ["0-0-100x60"]


def test_overlap_must_be_below_the_window():
    with pytest.raises(ValueError, match="--overlap 64: must be at least 0 and below the window"):
        WindowGrid(1000, 1000, (64, 64), 64)


SCENES = {
    "utm": (UTM_CRS, utm_transform(0.5)),
    "web-mercator": (WEB_MERCATOR, mercator_transform(0.6)),
}


@pytest.fixture(params=sorted(SCENES))
def scene_file(request, tmp_path) -> Path:
    crs, transform = SCENES[request.param]
    pixels, _ = draw(300, 420, SCENE_SHAPES[:3], seed=1)
    return write_scene(tmp_path / f"{request.param}.tif", pixels, crs, transform)


def test_a_windows_footprint_lands_where_its_pixels_are(scene_file):
    scene = Scene(str(scene_file), [], None)
    grid = WindowGrid(scene.width, scene.height, (128, 96), 16)
    places = WindowPlaces(scene.crs, scene.transform, grid)
    with rasterio.open(scene_file) as dataset:
        for key in grid.keys():
            col, row, width, height = (int(v) for v in key.replace("x", "-").split("-"))
            footprint = places.footprint(key)
            assert footprint.bounds == pytest.approx(window_bounds(Window(col, row, width, height), dataset.transform))
            for r, c in [(row, col), (row + height - 1, col + width - 1), (row + height // 2, col + 1)]:
                assert footprint.contains(shapely.Point(dataset.xy(r, c)))  # the pixel's centre, by rasterio
            assert not footprint.contains(shapely.Point(dataset.xy(row + height, col + width)))


def test_a_windows_geojson_footprint_is_the_same_place_in_wgs84(scene_file):
    from rasterio.warp import transform as reproject

    scene = Scene(str(scene_file), [], None)
    places = WindowPlaces(scene.crs, scene.transform, WindowGrid(scene.width, scene.height, (128, 128)))
    footprint = shape(places.wgs84("128-0-128x128"))
    corners = places.footprint("128-0-128x128").exterior.coords
    lons, lats = reproject(scene.crs, "EPSG:4326", [x for x, _ in corners], [y for _, y in corners])
    for lon, lat in zip(lons, lats, strict=True):
        assert footprint.distance(shapely.Point(lon, lat)) < 1e-9
    assert footprint.exterior.is_ccw  # RFC 7946's winding


def test_a_tiles_footprint_is_mercantiles_square_in_web_mercator():
    footprint = TilePlaces().footprint("4150-2818-13")
    assert footprint.bounds == pytest.approx(tuple(mercantile.xy_bounds(4150, 2818, 13)))


def png_pixels(data: bytes) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(data)))
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def test_a_window_is_sent_as_a_png_of_exactly_the_scenes_pixels(scene_file):
    reader = WindowReader(Scene(str(scene_file), [], None))
    with rasterio.open(scene_file) as dataset:
        expected = dataset.read([1, 2, 3], window=Window(256, 128, 128, 96))
    assert np.array_equal(png_pixels(reader.fetch("256-128-128x96")), expected)


def test_bands_choose_what_is_sent_in_their_order(tmp_path):
    pixels = np.stack([np.full((64, 64), value, dtype=np.uint8) for value in (10, 20, 30, 40)])
    path = write_scene(tmp_path / "four.tif", pixels, UTM_CRS, utm_transform())
    sent = png_pixels(WindowReader(Scene(str(path), [4, 1, 2], None)).fetch("0-0-64x64"))
    assert [int(band.max()) for band in sent] == [40, 10, 20]
    assert png_pixels(WindowReader(Scene(str(path), [3], None)).fetch("0-0-64x64")).shape == (1, 64, 64)


def test_a_window_of_nothing_but_nodata_is_skipped_and_partial_nodata_is_sent_black(tmp_path):
    pixels = np.full((3, 128, 128), 7, dtype=np.uint8)
    pixels[:, :64, :] = 0
    pixels[:, 64:, :16] = 0
    path = write_scene(tmp_path / "edge.tif", pixels, UTM_CRS, utm_transform(), nodata=0)
    reader = WindowReader(Scene(str(path), [], None))
    with pytest.raises(InputSkipped):
        reader.fetch("0-0-128x64")
    sent = png_pixels(reader.fetch("0-64-128x64"))
    assert sent[:, :, :16].max() == 0 and sent[:, :, 16:].min() == 7


def test_a_16_bit_scene_needs_scale_and_scale_maps_min_and_max_to_0_and_255(tmp_path):
    pixels = np.tile(np.array([0, 1000, 5500, 10000, 20000], dtype=np.uint16), (3, 5, 1))
    path = write_scene(tmp_path / "reflectance.tif", pixels, UTM_CRS, utm_transform())
    with pytest.raises(ValueError, match=r"its bands are uint16, not 8-bit: give --scale MIN MAX"):
        Scene(str(path), [], None)
    sent = png_pixels(WindowReader(Scene(str(path), [], (1000.0, 10000.0))).fetch("0-0-5x5"))
    assert sent[0, 0].tolist() == [0, 0, 128, 255, 255]


def test_the_models_input_size_is_read_from_its_metadata_where_it_says_it():
    assert model_input_size({"inputs": [{"name": "image_bytes", "kind": "image", "size": [224, 320]}]}) == (320, 224)
    assert model_input_size({"inputs": [{"name": "image_bytes", "kind": "image", "size": 256}]}) == (256, 256)
    assert model_input_size({"inputs": [{"name": "image_bytes", "kind": "image"}]}) is None
    assert model_input_size(None) is None


# --- The mosaic and its polygons -----------------------------------------------------------------------------


def window_places(width: int, height: int, window: int, overlap: int = 0) -> WindowPlaces:
    return WindowPlaces(
        rasterio.crs.CRS.from_string(UTM_CRS), utm_transform(), WindowGrid(width, height, (window, window), overlap)
    )


def test_a_mosaic_keeps_each_windows_centre_where_windows_overlap(tmp_path):
    places = window_places(200, 150, 64, 24)
    keys = list(places.grid.keys())
    sink = MosaicSink(tmp_path / "mask.tif", places, ["a"], None)
    sink.commit([(key, np.full((64, 64), index, dtype=np.uint8).tolist()) for index, key in enumerate(keys)])
    sink.close()
    with rasterio.open(tmp_path / "mask.tif") as mosaic:
        pixels = mosaic.read(1)
    for index, key in enumerate(keys):
        col, row, width, height = places.grid.owned(key)
        assert (pixels[row : row + height, col : col + width] == index).all(), key
    assert set(np.unique(pixels)) == set(range(len(keys)))


def test_a_mask_answered_at_the_models_size_fills_its_whole_window(tmp_path):
    places = window_places(128, 128, 128)
    half = np.zeros((32, 32), dtype=np.uint8)
    half[:, 16:] = 1  # the model's 32-pixel answer for a 128-pixel window: its right half is class 1
    sink = MosaicSink(tmp_path / "mask.tif", places, [], None)
    sink.commit([("0-0-128x128", half.tolist())])
    sink.close()
    with rasterio.open(tmp_path / "mask.tif") as mosaic:
        pixels = mosaic.read(1)
    assert (pixels[:, :64] == 0).all() and (pixels[:, 64:] == 1).all()


def test_the_mosaic_is_a_valid_cog_in_the_scenes_crs_and_transform_with_nodata_where_nothing_was_answered(tmp_path):
    places = window_places(300, 200, 100)
    sink = MosaicSink(tmp_path / "mask.tif", places, ["background", "roof"], None)
    sink.commit([("0-0-100x100", np.ones((100, 100), dtype=int).tolist())])
    sink.close()
    assert cog_validate(str(tmp_path / "mask.tif")) == (True, [], [])
    with rasterio.open(tmp_path / "mask.tif") as mosaic:
        assert mosaic.crs == rasterio.crs.CRS.from_string(UTM_CRS) and mosaic.transform == utm_transform()
        assert mosaic.nodata == NODATA and json.loads(mosaic.tags()["classes"]) == ["background", "roof"]
        pixels = mosaic.read(1)
    assert (pixels[:100, :100] == 1).all() and (pixels[100:, :] == NODATA).all() and (pixels[:, 100:] == NODATA).all()


def test_a_reopened_mosaic_knows_its_windows_and_keeps_their_pixels(tmp_path):
    places = window_places(200, 100, 100)
    first = MosaicSink(tmp_path / "mask.tif", places, [], None)
    first.commit([("0-0-100x100", np.full((100, 100), 3).tolist())])
    first.close()
    again = MosaicSink(tmp_path / "mask.tif", places, [], None)
    assert again.done_keys() == {"0-0-100x100"}
    again.commit([("100-0-100x100", np.full((100, 100), 4).tolist())])
    again.close()
    with rasterio.open(tmp_path / "mask.tif") as mosaic:
        pixels = mosaic.read(1)
    assert (pixels[:, :100] == 3).all() and (pixels[:, 100:] == 4).all()


def test_a_mosaic_started_for_another_grid_is_refused_untouched(tmp_path):
    MosaicSink(tmp_path / "mask.tif", window_places(200, 100, 100), [], None).close()
    before = (tmp_path / "mask.tif.partial").read_bytes()
    with pytest.raises(Exception, match="was started for another scene, area or grid"):
        MosaicSink(tmp_path / "mask.tif", window_places(400, 100, 100), [], None)
    assert (tmp_path / "mask.tif.partial").read_bytes() == before


def test_a_mosaic_refuses_answers_that_are_not_masks(tmp_path):
    sink = MosaicSink(tmp_path / "mask.tif", window_places(100, 100, 100), [], None)
    with pytest.raises(ValueError, match=r"a \.tif mosaic needs a segmentation model's class-index masks"):
        sink.commit([("0-0-100x100", [0.2, 0.8])])
    sink.close()


def classes_raster(tmp_path: Path) -> Path:
    """Class 1: a 40x60 rectangle and a disc; class 2: a 10x10 square; the rest class 0, UTM at 0.5 m."""
    pixels = np.zeros((200, 200), dtype=np.uint8)
    pixels[Shape("rectangle", 10, 10, height=40, width=60).mask(200, 200)] = 1
    pixels[Shape("disc", 120, 120, radius=30).mask(200, 200)] = 1
    pixels[170:180, 20:30] = 2
    return write_scene(tmp_path / "classes.tif", pixels[None], UTM_CRS, utm_transform())


def test_polygons_trace_each_region_of_each_class_but_the_background(tmp_path):
    found = list(vectorize(classes_raster(tmp_path), PolygonOptions(classes=["ground", "roof", "pool"])))
    assert sorted(index for _, index in found) == [1, 1, 2]
    disc_pixels = int(Shape("disc", 120, 120, radius=30).mask(200, 200).sum())
    areas = sorted(polygon.area for polygon, _ in found)  # square metres: 0.5 m pixels
    assert areas == [10 * 10 * 0.25, 40 * 60 * 0.25, disc_pixels * 0.25]


def test_min_area_drops_small_polygons_and_simplify_keeps_fewer_vertices(tmp_path):
    raster = classes_raster(tmp_path)
    plain = list(vectorize(raster, PolygonOptions()))
    simpler = list(vectorize(raster, PolygonOptions(simplify=1.0, min_area=30.0)))
    assert len(plain) == 3 and len(simpler) == 2
    disc = max(plain, key=lambda found: len(found[0].exterior.coords))[0]
    simple_disc = max(simpler, key=lambda found: len(found[0].exterior.coords))[0]
    assert len(simple_disc.exterior.coords) < len(disc.exterior.coords) / 2
    assert simple_disc.symmetric_difference(disc).area < disc.area * 0.05


@pytest.mark.parametrize("suffix, crs", [(".gpkg", UTM_CRS), (".geojson", "EPSG:4326")])
def test_polygons_files_list_their_count_and_crs_to_gdal(tmp_path, suffix, crs):
    options = PolygonOptions(classes=["ground", "roof", "pool"])
    out = tmp_path / f"polygons{suffix}"
    writer = PolygonWriter(str(out), "results", UTM_CRS, options)
    assert writer.write(vectorize(classes_raster(tmp_path), options)) == 3
    info = pyogrio.read_info(out)
    assert (info["features"], info["crs"], info["geometry_type"]) == (3, crs, "Polygon")
    assert list(info["fields"]) == ["class", "class_name", "area"]
    assert sorted(pyogrio.raw.read(out)[3][1]) == ["pool", "roof", "roof"]


def test_no_polygon_at_all_still_writes_an_empty_layer(tmp_path):
    out = tmp_path / "none.gpkg"
    PolygonWriter(str(out), "results", UTM_CRS, PolygonOptions()).write([])
    assert pyogrio.read_info(out)["features"] == 0


# --- GeoPackage of footprints --------------------------------------------------------------------------------


def test_a_geopackages_features_are_footprints_in_the_scenes_crs_and_a_reopened_one_knows_them(tmp_path):
    places = window_places(256, 128, 128)
    sink = GeoPackageSink(tmp_path / "windows.gpkg", places, "results", "window")
    sink.commit([("0-0-128x128", [0.25, 0.75])])
    sink.close()
    again = GeoPackageSink(tmp_path / "windows.gpkg", places, "results", "window")
    assert again.done_keys() == {"0-0-128x128"}
    again.commit([("128-0-128x128", [0.5, 0.5])])
    again.close()
    info = pyogrio.read_info(tmp_path / "windows.gpkg")
    assert (info["features"], info["crs"], list(info["fields"])) == (2, UTM_CRS, ["window", "p0", "p1"])
    _, _, geometry, fields = pyogrio.raw.read(tmp_path / "windows.gpkg")
    assert list(fields[0]) == ["0-0-128x128", "128-0-128x128"] and list(fields[2]) == [0.75, 0.5]
    assert shapely.from_wkb(geometry[1]).equals(places.footprint("128-0-128x128"))


def test_a_geopackage_written_by_one_run_is_refused_to_another_at_once(tmp_path):
    places = window_places(128, 128, 128)
    first = GeoPackageSink(tmp_path / "windows.gpkg", places, "results", "window")
    with pytest.raises(Exception, match="another predict-batch is writing"):
        GeoPackageSink(tmp_path / "windows.gpkg", places, "results", "window")
    first.close()


def test_a_geopackage_refuses_masks(tmp_path):
    sink = GeoPackageSink(tmp_path / "windows.gpkg", window_places(128, 128, 128), "results", "window")
    with pytest.raises(ValueError, match=r"a segmentation model's masks go to a \.tif mosaic"):
        sink.commit([("0-0-128x128", [[0, 1], [1, 0]])])
    sink.close()


# --- The flags ---------------------------------------------------------------------------------------------


def usage_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--server", "http://127.0.0.1:9"])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_area_needs_its_zoom_and_imagery(capsys, tmp_path):
    area = str(geojson_file(tmp_path, mapping(PARIS)))
    assert "--area needs --zoom" in usage_error(
        capsys, "--area", area, "--imagery", "http://i/{z}/{x}/{y}.png", "--out", "a.gpkg"
    )
    assert "--area needs --imagery" in usage_error(capsys, "--area", area, "--zoom", "12", "--out", "a.gpkg")


def test_polygons_need_a_tif_mosaic(capsys, scene_file):
    message = usage_error(
        capsys, "--raster", str(scene_file), "--window", "64", "--out", "w.gpkg", "--polygons", "p.gpkg"
    )
    assert "--polygons vectorizes a mosaic: give --out a .tif file too" in message


def test_a_scene_without_a_window_size_asks_for_window_when_the_server_does_not_say_it(capsys, scene_file):
    assert "give --window" in usage_error(capsys, "--raster", str(scene_file), "--out", "w.gpkg")


def test_a_geopackage_of_a_folder_is_refused_for_want_of_places(capsys, tmp_path):
    assert "give --tiles, --area or --raster" in usage_error(capsys, str(tmp_path), "--out", str(tmp_path / "x.gpkg"))


def test_without_the_geo_extra_the_geo_flags_say_what_to_install(tmp_path):
    """A Python where rasterio cannot be imported (as without the extra): a usage error naming the install."""
    program = (
        "import sys; sys.modules['rasterio'] = None\n"  # `import rasterio` now raises ImportError
        "from fastai_serving_client.cli import main\n"
        f"main(['--raster', 'scene.tif', '--server', 'http://127.0.0.1:9', '--out', {str(tmp_path / 'w.gpkg')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--raster needs the geo extra" in result.stderr and "pip install './client[geo]'" in result.stderr


def test_a_mosaic_too_large_to_make_is_refused_before_any_file_is_written(tmp_path):
    whole_zoom_17_degree = TilePlaces((66000, 44000, 66400, 44400), 17, 256)  # 102,656 pixels a side
    with pytest.raises(ValueError, match=r"a 102656x102656 mosaic is over 4 Gpixels: split the area"):
        MosaicSink(tmp_path / "mask.tif", whole_zoom_17_degree, [], None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("total, shard", [(10, "0/3"), (10, "2/3"), (9, "2/3"), (2, "3/4"), (0, "0/1")])
def test_a_streamed_sources_shards_split_its_keys_and_are_counted_without_listing(total, shard):
    from fastai_serving_client.sources import parse_shard, shard_count, shard_keys

    keys = [str(index) for index in range(total)]
    chosen = list(shard_keys(iter(keys), parse_shard(shard)))
    everyone = [
        key
        for index in range(parse_shard(shard).count)
        for key in shard_keys(keys, parse_shard(f"{index}/{parse_shard(shard).count}"))
    ]
    assert len(chosen) == shard_count(total, parse_shard(shard))
    assert sorted(everyone, key=int) == keys
