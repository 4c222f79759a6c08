"""docs/batch.md's "Areas and scenes" run: a scene to segment and a model that segments it, then a picture of the result.

python -m harness.scene_demo make FOLDER     FOLDER/scene.tif (the pattern drawn into a UTM scene, a COG) and
                                             FOLDER/store/pattern.mar (harness/learners.py's pattern segmenter)
python -m harness.scene_demo draw FOLDER PNG the scene beside predict-batch's mosaic (FOLDER/mask.tif) with its
                                             polygons (FOLDER/shapes.gpkg) outlined, on the scene's coordinates
"""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

from harness.rasters import SCENE_SHAPES, SCENE_SIZE, UTM_CRS, draw, utm_transform, write_scene


def make(folder: Path) -> None:
    from harness.learners import make_pattern_segmenter
    from harness.servers import archive_here

    folder.mkdir(parents=True, exist_ok=True)
    pixels, _ = draw(*SCENE_SIZE, SCENE_SHAPES, seed=7)
    write_scene(folder / "scene.tif", pixels, UTM_CRS, utm_transform(), cog=True)
    archive_here("pattern", make_pattern_segmenter(folder / "pattern"), folder / "store", "--force")
    print(
        f"scene_demo: wrote {folder / 'scene.tif'} ({SCENE_SIZE[1]}x{SCENE_SIZE[0]}, {UTM_CRS}) and {folder / 'store'}"
    )


def picture(folder: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pyogrio
    import rasterio
    import shapely
    from PIL import Image

    with rasterio.open(folder / "scene.tif") as scene:
        pixels, bounds = scene.read(), scene.bounds
    with rasterio.open(folder / "mask.tif") as mosaic:
        classes = mosaic.read(1, masked=True)
    _, _, geometry, _ = pyogrio.raw.read(folder / "shapes.gpkg")
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    left.imshow(np.transpose(pixels, (1, 2, 0)), extent=extent)
    left.set_title("scene.tif (EPSG:32631, 0.5 m pixels)")
    right.imshow(classes, extent=extent, cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest")
    for polygon in shapely.from_wkb(geometry):
        x, y = polygon.exterior.xy
        right.plot(x, y, color="tab:red", linewidth=1.5)
    right.set_title(f"mask.tif (class 1 grey) and shapes.gpkg ({len(geometry)} polygons, red)")
    for axes in (left, right):
        axes.set_xlabel("easting (m)")
        axes.ticklabel_format(useOffset=False, style="plain")
    left.set_ylabel("northing (m)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn = io.BytesIO()
    figure.savefig(drawn, dpi=80)
    # The scene's noise makes a full-colour PNG large: 64 colours draw it as well for a page.
    Image.open(drawn).convert("RGB").quantize(64).save(out, optimize=True)
    print(f"scene_demo: wrote {out}")


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("make").add_argument("folder", type=Path)
    drawing = commands.add_parser("draw")
    drawing.add_argument("folder", type=Path)
    drawing.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.folder)
    else:
        picture(args.folder, args.png)


if __name__ == "__main__":
    main()
