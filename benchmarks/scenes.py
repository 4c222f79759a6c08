"""Benchmark: predict-batch over a scene, beside predict-batch over a folder, in one run.

Rows (the benchmark's Learner, served by the default archive, the same load: CLIENTS requests of
INSTANCES images in flight):
  7  predict-batch -> shim    the benchmark's tiles as JPEG files in a folder, into a JSON Lines file (bench.py's row 7)
  7s predict-batch scene      the same tiles laid side by side in one GeoTIFF (decoded: the scene holds pixels),
                              read window by window (one window = one tile), each sent as a PNG, into a GeoPackage
                              of footprints: windows per second
And, with --big SIDE, the memory bound: a SIDE x SIDE one-band scene of harness/rasters.py's pattern,
written block by block, through a small segmentation model (harness/learners.py's pattern segmenter)
into a COG mosaic and its polygons, with predict-batch's peak resident memory sampled throughout.
Not a test: `make bench-scene` (and `make bench`, whose table gains row 7s).
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.loads import PeakRss, Row
from harness.servers import ROOT, Servers, make_archive

PREDICT_BATCH = str(ROOT / "scripts" / "predict-batch")
SUMMARY = re.compile(
    r"(\d+) \w+, done (\d+), skipped \d+ \(done before\), failed (\d+)(?:, nodata \d+ \(not sent\))?, ([\d.]+) images/s"
)


def run_predict_batch(command: list[str], log: Path, also: list[int]) -> tuple[int, float, float, str]:
    """(done, its rate, peak RSS in MB of predict-batch and the `also` processes, its output) of one run,
    checked to have failed nothing."""
    with open(log, "w+") as out:
        client = subprocess.Popen([PREDICT_BATCH, *command], stdout=out, stderr=subprocess.STDOUT)
        with PeakRss([client.pid, *also]) as rss:
            client.wait(timeout=3600)
        out.seek(0)
        output = out.read()
    summary = SUMMARY.search(output)
    if client.returncode != 0 or not summary or summary.group(3) != "0":
        raise SystemExit(f"bench: predict-batch failed (exit {client.returncode}):\n{output[-2000:]}")
    return int(summary.group(2)), float(summary.group(4)), rss.peak_mb, output


def tiles_scene(tiles: list[bytes], count: int, path: Path) -> tuple[int, int]:
    """`count` tiles (cycled) decoded and laid in a grid in one north-up GeoTIFF (web mercator); (columns, tile side)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    decoded = [np.asarray(Image.open(io.BytesIO(tile)).convert("RGB")) for tile in tiles]
    side = decoded[0].shape[0]
    rows = next(side for side in range(int(np.sqrt(count)), 0, -1) if count % side == 0)  # exactly `count` windows
    columns = count // rows
    profile = {
        "driver": "GTiff", "width": columns * side, "height": rows * side, "count": 3, "dtype": "uint8",
        "crs": "EPSG:3857", "transform": from_origin(240_000.0, 5_070_000.0, 0.5, 0.5), "tiled": True,
        "blockxsize": side, "blockysize": side,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as scene:
        for index in range(rows * columns):
            row, col = divmod(index, columns)
            window = rasterio.windows.Window(col * side, row * side, side, side)
            scene.write(decoded[index % len(decoded)].transpose(2, 0, 1), window=window)
    return columns * rows, side


def row_predict_batch_scene(
    servers: Servers, tiles: list[bytes], clients: int, instances: int, count: int, folder: Path
) -> Row:
    """Row 7s: the tiles as windows of one scene, read with rasterio, sent as PNGs, footprints into a GeoPackage."""
    folder.mkdir(parents=True, exist_ok=True)
    windows, side = tiles_scene(tiles, count, folder / "scene.tif")
    command = ["--raster", str(folder / "scene.tif"), "--window", str(side), "--server", servers.shim]
    command += ["--model", "bench", "--out", str(folder / "windows.gpkg"), "--batch", str(instances)]
    command += ["--concurrency", str(clients)]
    done, rate, peak_mb, _ = run_predict_batch(command, folder / "predict-batch-scene.log", [servers.process.pid])
    note = f"{windows} {side}-pixel windows of one GeoTIFF, PNG each, -> GeoPackage footprints"
    return Row("7s predict-batch scene", done, done / rate, peak_rss_mb=peak_mb, note=note)


def write_big_scene(path: Path, side: int, block: int = 1024) -> int:
    """A `side` x `side` one-band pattern scene (UTM), written block by block; returns how many shapes it holds."""
    import rasterio

    from harness.rasters import BRIGHT, DARK, UTM_CRS, utm_transform

    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint8", "crs": UTM_CRS,
        "transform": utm_transform(), "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "YES",
    }  # fmt: skip
    shapes = 0
    with rasterio.open(path, "w", **profile) as scene:
        for row in range(0, side, block):
            for col in range(0, side, block):
                height, width = min(block, side - row), min(block, side - col)
                pixels = rng.integers(*DARK, size=(height, width), dtype=np.uint8)
                # A bright square in each block, off its edges: what the pattern segmenter finds.
                top, left = block // 4, block // 3
                if height > top + block // 3 and width > left + block // 3:
                    pixels[top : top + block // 3, left : left + block // 3] = BRIGHT[0] + 20
                    shapes += 1
                scene.write(pixels[None], window=rasterio.windows.Window(col, row, width, height))
    return shapes


def big_scene(side: int, window: int, folder: Path) -> None:
    from harness.learners import make_pattern_segmenter

    began = time.perf_counter()
    shapes = write_big_scene(folder / "big.tif", side)
    made_s = time.perf_counter() - began
    store = folder / "store"
    made = make_archive("pattern", make_pattern_segmenter(folder / "pattern"), store)
    if made.returncode != 0:
        raise SystemExit(f"bench: make-archive failed:\n{made.stderr}")
    servers = Servers(model_store=store, log_dir=folder / "logs").start(["pattern"], timeout_s=600)
    try:
        command = ["--raster", str(folder / "big.tif"), "--window", str(window), "--server", servers.shim]
        command += ["--model", "pattern", "--out", str(folder / "big-mask.tif"), "--polygons", str(folder / "big.gpkg")]
        began = time.perf_counter()
        done, rate, peak_mb, output = run_predict_batch(command, folder / "big.log", [])  # the client's own
        wall_s = time.perf_counter() - began
    finally:
        servers.stop()
    polygons = re.search(r"; (\d+) polygons in", output)
    print(f"\nscene {side}x{side} (one band, {side * side / 2**20:.0f} MiB of pixels; written in {made_s:.0f} s), "
          f"{window}-pixel windows: {done} windows at {rate:.1f} windows/s; whole run {wall_s:.0f} s including the COG "
          f"and {polygons.group(1) if polygons else '?'} polygons ({shapes} shapes drawn)")  # fmt: skip
    print(f"predict-batch's peak resident memory: {peak_mb:.0f} MB")


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--count", type=int, default=384, help="images in rows 7 and 7s (bench.py's: 384)")
    parser.add_argument("--big", type=int, metavar="SIDE", help="also the memory run, on a SIDE x SIDE scene")
    parser.add_argument("--window", type=int, default=512, help="--big: the window size")
    args = parser.parse_args(argv)
    from benchmarks.bench import row_predict_batch
    from harness.workload import make_learner, make_tiles

    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        tmp = Path(tmp)
        tiles = make_tiles(128)
        made = make_archive("bench", make_learner(tmp / "learner"), tmp / "store")
        if made.returncode != 0:
            raise SystemExit(f"bench: make-archive failed:\n{made.stderr}")
        servers = Servers(model_store=tmp / "store", log_dir=tmp / "logs").start(["bench"], timeout_s=600)
        try:
            per_client = max(1, args.count // (args.clients * args.instances))
            rows = []
            for turn in range(2):  # each row twice, in turns, so a busy machine slows both alike
                rows.append(
                    row_predict_batch(servers, tiles, args.clients, args.instances, per_client, tmp / f"f{turn}")
                )
                rows.append(row_predict_batch_scene(
                    servers, tiles, args.clients, args.instances, args.count, tmp / f"s{turn}"
                ))  # fmt: skip
        finally:
            servers.stop()
        print(f"\n| {'row':<26} | {'images/s':>8} | {'peak RSS MB':>11} |\n|{'-' * 28}|{'-' * 10}|{'-' * 13}|")
        for row in rows:
            print(f"| {row.name:<26} | {row.images_per_s:8.1f} | {row.peak_rss_mb:11.0f} |")
        for name in ("7 ", "7s"):
            chosen = [row for row in rows if row.name.startswith(name)]
            print(f"  {chosen[0].name.split()[0]}: {chosen[0].note}")
        if args.big:
            big_scene(args.big, args.window, tmp)


if __name__ == "__main__":
    main()
