"""predict-batch's areas and scenes end to end: the real client against real servers (scripts/serve, started for
this module with the two models it needs: the session's small classifier and the pattern segmenter), scenes drawn
here with known transforms and CRSs (harness/rasters.py), a COG served over HTTP with range requests, a loopback
XYZ imagery server, and a real PostgreSQL with PostGIS. Outputs are read back with GDAL (pyogrio's and
rasterio's) and PostGIS's own catalogue, as ogrinfo and QGIS would read them; runs are killed and resumed.
"""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pyogrio
import pytest
import rasterio
import requests
import shapely
from rasterio.features import shapes
from rasterio.warp import transform_geom
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import mapping, shape

from fastai_serving_client.areas import AreaCover
from fastai_serving_client.places import WindowPlaces
from fastai_serving_client.scenes import Scene, WindowGrid, WindowReader
from harness import PROJECT_ROOT
from harness.learners import PATTERN_SIZE, make_pattern_segmenter
from harness.postgres import PostgresCluster
from harness.rasters import (
    SCENE_SHAPES,
    SCENE_SIZE,
    UTM_CRS,
    WEB_MERCATOR,
    RangeFileServer,
    draw,
    mercator_transform,
    utm_transform,
    write_scene,
    xyz_tiles,
)
from harness.servers import Servers, archive_here
from harness.tile_server import TileServer
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

PREDICT_BATCH = str(PROJECT_ROOT / "scripts" / "predict-batch")
SEGMENTER = "pattern_segmenter"
IOU = 0.9  # the bar; the pattern segmenter reaches about 0.99 here
TOLERANCE = 1e-5  # the same image in another batch may differ in the last float bits


def predict_batch(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PREDICT_BATCH, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def start_predict_batch(log: Path, *args: object) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([PREDICT_BATCH, *map(str, args)], stdout=out, stderr=subprocess.STDOUT)


def iou(got, expected) -> float:
    return got.intersection(expected).area / got.union(expected).area


def truth_polygons(truth: np.ndarray, transform) -> shapely.Geometry:
    """The drawn shapes as one (multi)polygon in the scene's CRS, traced from their mask by GDAL."""
    traced = shapes(truth.astype(np.uint8), mask=truth, transform=transform)
    return shapely.union_all([shape(geometry) for geometry, _ in traced])


def read_polygons(path: Path) -> tuple[dict, shapely.Geometry]:
    """A vector file's layer info (GDAL's, as ogrinfo prints it) and the union of its polygons."""
    _, _, geometry, _ = pyogrio.raw.read(path)
    return pyogrio.read_info(path), shapely.union_all(shapely.from_wkb(geometry))


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory, small_learners):
    """scripts/serve with the classifier and the pattern segmenter alone (not the session's every model)."""
    store = tmp_path_factory.mktemp("geo-store")
    archive_here("classifier", small_learners["classifier"], store)
    archive_here(SEGMENTER, make_pattern_segmenter(tmp_path_factory.mktemp(SEGMENTER)), store)
    servers = Servers(model_store=store, log_dir=tmp_path_factory.mktemp("geo-servers-logs"))
    servers.start(["classifier", SEGMENTER])
    yield servers
    servers.stop(wait=False)


@pytest.fixture(scope="module")
def postgres():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def utm_scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The pattern drawn into a UTM scene, written as a COG; and the drawn shapes' mask."""
    pixels, truth = draw(*SCENE_SIZE, SCENE_SHAPES, seed=7)
    folder = tmp_path_factory.mktemp("utm-scene")
    return write_scene(folder / "scene.tif", pixels, UTM_CRS, utm_transform(), cog=True), truth


@pytest.fixture(scope="module")
def segmented_over_http(torchserve, utm_scene, tmp_path_factory):
    """The UTM scene served over HTTP and segmented by a served model into a mosaic and polygons (one run)."""
    scene, _ = utm_scene
    out = tmp_path_factory.mktemp("segmented")
    with RangeFileServer(scene.parent) as files:
        result = predict_batch(
            "--raster", files.url(scene.name), "--window", PATTERN_SIZE, "--overlap", 16, "--server", torchserve.shim,
            "--model", SEGMENTER, "--out", out / "mask.tif", "--polygons", out / "shapes.gpkg",
        )  # fmt: skip
        ranges = files.ranges
    assert result.returncode == 0, result.stderr
    return result, out, ranges


def test_a_scene_read_over_http_with_range_requests_is_segmented_into_polygons_matching_the_drawn_shapes(
    segmented_over_http, utm_scene
):
    result, out, ranges = segmented_over_http
    scene, truth = utm_scene
    assert ranges > 0  # GDAL read the COG's bytes in ranges, as from an object store
    info, polygons = read_polygons(out / "shapes.gpkg")
    assert (info["features"], info["crs"], info["geometry_type"]) == (len(SCENE_SHAPES), UTM_CRS, "Polygon")
    assert iou(polygons, truth_polygons(truth, utm_transform())) >= IOU


def test_the_segmentation_mosaic_is_a_valid_cog_in_the_scenes_crs_whose_classes_match_the_drawn_shapes(
    segmented_over_http, utm_scene
):
    _, out, _ = segmented_over_http
    _, truth = utm_scene
    assert cog_validate(str(out / "mask.tif")) == (True, [], [])
    with rasterio.open(out / "mask.tif") as mosaic:
        assert (mosaic.crs.to_string(), mosaic.transform, mosaic.shape) == (UTM_CRS, utm_transform(), SCENE_SIZE)
        assert json.loads(mosaic.tags()["classes"]) == ["background", "shape"]
        found = mosaic.read(1) == 1
    assert (found & truth).sum() / (found | truth).sum() >= IOU


def test_segmentation_polygons_go_into_a_postgis_table_with_the_scenes_srid(torchserve, postgres, tmp_path):
    pixels, truth = draw(*SCENE_SIZE, SCENE_SHAPES, seed=11)
    scene = write_scene(tmp_path / "mercator.tif", pixels, WEB_MERCATOR, mercator_transform())
    result = predict_batch(
        "--raster", scene, "--window", PATTERN_SIZE, "--server", torchserve.shim, "--model", SEGMENTER,
        "--out", tmp_path / "mask.tif", "--polygons", postgres.url, "--table", "roofs",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with psycopg.connect(postgres.url) as connection:
        catalogue = connection.execute(
            "SELECT srid, type FROM geometry_columns WHERE f_table_name = 'roofs_polygons'"
        ).fetchone()
        rows = connection.execute("SELECT class_name, ST_SRID(geom), ST_AsBinary(geom) FROM roofs_polygons").fetchall()
    assert catalogue == (3857, "POLYGON")
    assert len(rows) == len(SCENE_SHAPES) and {(name, srid) for name, srid, _ in rows} == {("shape", 3857)}
    polygons = shapely.union_all([shapely.from_wkb(bytes(wkb)) for _, _, wkb in rows])
    assert iou(polygons, truth_polygons(truth, mercator_transform())) >= IOU


def test_a_scene_without_window_is_cut_into_windows_of_the_models_own_input_size(torchserve, tmp_path):
    pixels, truth = draw(*SCENE_SIZE, SCENE_SHAPES, seed=11)
    scene = write_scene(tmp_path / "mercator.tif", pixels, WEB_MERCATOR, mercator_transform())
    result = predict_batch(
        "--raster", scene, "--server", torchserve.shim, "--model", SEGMENTER, "--out", tmp_path / "mask.tif"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"in {PATTERN_SIZE}x{PATTERN_SIZE} windows" in result.stderr  # the Resize its metadata names
    with rasterio.open(tmp_path / "mask.tif") as mosaic:
        found = mosaic.read(1) == 1
    assert (found & truth).sum() / (found | truth).sum() >= IOU


# --- Footprints with answers, killed part-way and resumed ------------------------------------------------------

KILL_SIZE, KILL_WINDOW = (384, 384), 16  # 576 windows: the first run, one window a request, is killed early


@pytest.fixture(scope="module")
def small_windows_scene(tmp_path_factory) -> Path:
    pixels, _ = draw(*KILL_SIZE, SCENE_SHAPES[2:3], seed=5)
    return write_scene(tmp_path_factory.mktemp("kill-scene") / "scene.tif", pixels, UTM_CRS, utm_transform())


def scene_keys(scene: Path) -> list[str]:
    opened = Scene(str(scene), [], None)
    return list(WindowGrid(opened.width, opened.height, (KILL_WINDOW, KILL_WINDOW)).keys())


def server_answers(torchserve, scene: Path, keys: list[str]) -> dict[str, list[float]]:
    """What the server answers for these windows' PNGs, asked directly."""
    reader = WindowReader(Scene(str(scene), [], None))
    body = {"instances": [{"b64": base64.b64encode(reader.fetch(key)).decode()} for key in keys]}
    response = requests.post(f"{torchserve.shim}/v1/models/classifier:predict", json=body, timeout=60)
    response.raise_for_status()
    return dict(zip(keys, response.json()["predictions"], strict=True))


def gpkg_keys(path: Path) -> list[str]:
    """The window keys the GeoPackage holds now (read while a run may be writing it)."""
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as database:
            return [key for (key,) in database.execute("SELECT window FROM results")]
    except sqlite3.OperationalError:  # the layer is not made yet
        return []


def killed_and_resumed(
    scene: Path, out: object, count, log: Path, *flags: object
) -> tuple[int, subprocess.CompletedProcess]:
    """Run over the scene one window a request, SIGKILL it once 8 windows are committed, run it again at full
    speed; returns how many were committed before the kill, and the rerun."""
    first = start_predict_batch(log, "--raster", scene, "--window", KILL_WINDOW, "--out", out, *flags, "--batch", 1,
                                "--concurrency", 1)  # fmt: skip
    wait_for(lambda: count() >= 8, "8 committed windows", timeout_s=120, every_s=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    committed = count()
    rerun = predict_batch("--raster", scene, "--window", KILL_WINDOW, "--out", out, *flags, "--batch", 16)
    return committed, rerun


def test_a_scene_run_killed_part_way_and_run_again_writes_each_window_once_into_a_geopackage(
    torchserve, small_windows_scene, tmp_path
):
    out = tmp_path / "windows.gpkg"
    flags = ("--server", torchserve.shim, "--model", "classifier")
    committed, rerun = killed_and_resumed(
        small_windows_scene, out, lambda: len(gpkg_keys(out)), tmp_path / "first.log", *flags
    )
    keys = scene_keys(small_windows_scene)
    assert rerun.returncode == 0, rerun.stderr
    assert 8 <= committed < len(keys)
    assert f"skipped {committed} (done before), failed 0" in rerun.stderr
    written = gpkg_keys(out)
    assert sorted(written) == sorted(keys)  # each window exactly once
    info = pyogrio.read_info(out)
    assert (info["features"], info["crs"], list(info["fields"])) == (len(keys), UTM_CRS, ["window", "p0", "p1", "p2"])
    _, _, geometry, fields = pyogrio.raw.read(out, where="window IN ('0-0-16x16', '368-368-16x16')")
    expected = server_answers(torchserve, small_windows_scene, list(fields[0]))
    places = WindowPlaces(UTM_CRS, utm_transform())
    for index, key in enumerate(fields[0]):
        assert [fields[1][index], fields[2][index], fields[3][index]] == pytest.approx(expected[key], abs=TOLERANCE)
        assert shapely.from_wkb(geometry[index]).equals(places.footprint(key))


def test_a_scene_run_killed_part_way_and_run_again_writes_each_window_once_into_postgis_with_its_footprint(
    torchserve, postgres, small_windows_scene, tmp_path
):
    def rows() -> dict[str, bytes]:
        with psycopg.connect(postgres.url) as connection:
            try:
                return {
                    key: bytes(wkb) for key, wkb in connection.execute("SELECT tile, ST_AsBinary(geom) FROM killed")
                }
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                return {}  # the run is still making its table (chip-n-scale's, then its geom column)

    flags = ("--server", torchserve.shim, "--model", "classifier", "--table", "killed")
    committed, rerun = killed_and_resumed(
        small_windows_scene, postgres.url, lambda: len(rows()), tmp_path / "first.log", *flags
    )
    keys = scene_keys(small_windows_scene)
    assert rerun.returncode == 0, rerun.stderr
    assert 8 <= committed < len(keys)
    assert f"skipped {committed} (done before), failed 0" in rerun.stderr
    written = rows()
    assert sorted(written) == sorted(keys)  # the primary key keeps each once
    places = WindowPlaces(UTM_CRS, utm_transform())
    assert all(shapely.from_wkb(wkb).equals(places.footprint(key)) for key, wkb in written.items())
    with psycopg.connect(postgres.url) as connection:
        assert connection.execute(
            "SELECT srid, type FROM geometry_columns WHERE f_table_name = 'killed'"
        ).fetchone() == (32631, "POLYGON")


# --- Areas -----------------------------------------------------------------------------------------------------

AREA_ZOOM = 19


@pytest.fixture(scope="module")
def mercator_area(tmp_path_factory):
    """A web-mercator scene of the pattern, an area inside it (GeoJSON), its tiles at AREA_ZOOM, and the truth."""
    folder = tmp_path_factory.mktemp("area")
    pixels, truth = draw(*SCENE_SIZE, SCENE_SHAPES, seed=3)
    scene = write_scene(folder / "scene.tif", pixels, WEB_MERCATOR, mercator_transform())
    with rasterio.open(scene) as dataset:
        left, bottom, right, top = dataset.bounds
    inside = shapely.Polygon(
        [(left + 30, bottom + 20), (right - 20, bottom + 60), (right - 40, top - 25), (left + 20, top - 30)]
    )
    area = shape(transform_geom(WEB_MERCATOR, "EPSG:4326", mapping(inside)))
    path = folder / "area.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(area)}))
    keys = [tile.key for tile in AreaCover(area, AREA_ZOOM).tiles()]
    return path, keys, xyz_tiles(scene, keys, PATTERN_SIZE), inside, truth


def test_an_area_run_and_a_tile_list_run_resume_each_other(torchserve, mercator_area, tmp_path):
    path, keys, tiles, _, _ = mercator_area
    out = tmp_path / "results.jsonl"
    half = tmp_path / "half.txt"
    half.write_text("".join(f"{key}\n" for key in keys[::2]))
    everything = tmp_path / "all.txt"
    everything.write_text("".join(f"{key}\n" for key in keys))
    server = ("--server", torchserve.shim, "--model", "classifier", "--out", out)
    with TileServer(tiles) as imagery:
        listed = predict_batch("--tiles", half, "--imagery", imagery.template, *server)
        area = predict_batch("--area", path, "--zoom", AREA_ZOOM, "--imagery", imagery.template, *server)
        listed_again = predict_batch("--tiles", everything, "--imagery", imagery.template, *server)
    assert listed.returncode == area.returncode == listed_again.returncode == 0, area.stderr
    assert f"{len(keys)} tiles from area {path} (1 polygon) at zoom {AREA_ZOOM}" in area.stderr
    assert f"done {len(keys) - len(keys[::2])}, skipped {len(keys[::2])} (done before)" in area.stderr
    assert f"done 0, skipped {len(keys)} (done before)" in listed_again.stderr
    written = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert sorted(written) == sorted(keys)


@pytest.mark.parametrize("suffix, crs", [(".gpkg", WEB_MERCATOR), (".geojson", "EPSG:4326")])
def test_an_areas_tiles_go_to_the_map_one_feature_each_in_its_crs(torchserve, mercator_area, tmp_path, suffix, crs):
    path, keys, tiles, _, _ = mercator_area
    out = tmp_path / f"tiles{suffix}"
    with TileServer(tiles) as imagery:
        result = predict_batch(
            "--area", path, "--zoom", AREA_ZOOM, "--imagery", imagery.template, "--server", torchserve.shim,
            "--model", "classifier", "--out", out,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = pyogrio.read_info(out)
    assert (info["features"], info["crs"], info["geometry_type"]) == (len(keys), crs, "Polygon")
    assert {"tile", "p0", "p1", "p2"} <= set(info["fields"])


def test_an_areas_segmentation_mosaic_gives_polygons_matching_the_drawn_shapes(torchserve, mercator_area, tmp_path):
    path, _, tiles, inside, truth = mercator_area
    with TileServer(tiles) as imagery:
        result = predict_batch(
            "--area", path, "--zoom", AREA_ZOOM, "--imagery", imagery.template, "--server", torchserve.shim,
            "--model", SEGMENTER, "--window", PATTERN_SIZE, "--out", tmp_path / "mask.tif",
            "--polygons", tmp_path / "shapes.geojson",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert cog_validate(str(tmp_path / "mask.tif")) == (True, [], [])
    info, polygons = read_polygons(tmp_path / "shapes.geojson")
    assert info["crs"] == "EPSG:4326"
    found = shape(transform_geom("EPSG:4326", WEB_MERCATOR, mapping(polygons))).intersection(inside)
    assert iou(found, truth_polygons(truth, mercator_transform()).intersection(inside)) >= IOU
