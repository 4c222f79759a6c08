"""The geo extra (`pip install './client[geo]'`): imported only by the flags that need it, which say so when it is missing."""

from __future__ import annotations

import os

from . import defaults

GEO_MODULES = ("rasterio", "rio_cogeo", "shapely", "pyproj", "pyogrio", "numpy", "PIL")
INSTALL_HINT = "pip install 'fastai-serving-client[geo]' (from a checkout: pip install './client[geo]')"


class GeoMissing(ValueError):
    """A flag needs the geo extra, which is not installed: a usage error that says what to install."""


def require_geo(what: str) -> None:
    """Raise GeoMissing naming `what` (a flag or an output) and the install command, unless the extra imports."""
    import importlib

    # Windows are read once, in order: a small block cache bounds memory, whatever the scene's size (GDAL reads
    # its options from the environment, before its first read; one already set there is the user's choice).
    os.environ.setdefault("GDAL_CACHEMAX", str(defaults.GDAL_CACHE_MB))
    for module in GEO_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise GeoMissing(f"{what} needs the geo extra ({error}): {INSTALL_HINT}") from error
