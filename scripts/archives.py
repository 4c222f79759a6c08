"""What a model archive (.mar) says about itself: its manifest, read in one place for serve, reload and build-demo.

`python -m fastai_serving_scripts.archives MODEL STORE` exits 0 when an archive in STORE serves MODEL (any version).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path


class NotAnArchive(ValueError):
    pass


def manifest_model(archive: Path) -> dict:
    """The "model" part of the archive's MAR-INF/MANIFEST.json (modelName, modelVersion, handler, ...)."""
    try:
        with zipfile.ZipFile(archive) as mar:
            return json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise NotAnArchive(f"{archive} is not a model archive: {error}") from None


def archive_identity(archive: Path) -> tuple[str, str]:
    """(model name, version) from the archive's manifest."""
    model = manifest_model(archive)
    try:
        return model["modelName"], model["modelVersion"]
    except KeyError as error:
        raise NotAnArchive(f"{archive}'s manifest names no {error}") from None


def archive_model_names(model_store: Path) -> list[str]:
    """The model names of the archives in the store, each once (an unreadable archive by its file name)."""
    names = []
    for archive in sorted(model_store.glob("*.mar")):
        try:
            name = manifest_model(archive)["modelName"]
        except (NotAnArchive, KeyError):
            name = archive.stem
        if name not in names:
            names.append(name)
    return names


def main(argv: list[str]) -> int:
    """0 when an archive of the store `argv[1]` serves the model `argv[0]` (in any version: a reload renames it)."""
    model, store = argv
    return 0 if model in archive_model_names(Path(store)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
