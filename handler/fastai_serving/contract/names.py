"""Model names and URL versions: what may reach a URL, checked before anything goes upstream."""

from __future__ import annotations

import re

from .errors import BadInput, NotFound

# Model names TorchServe registers (torch-model-archiver's own rule): nothing else reaches a URL.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
# A version in a TF Serving URL: /versions/<digits>.
URL_VERSION = re.compile(r"^[0-9]+$")


def check_model_name(model: str) -> None:
    """Refuse a model name TorchServe could not have registered, before it goes into any URL."""
    if not MODEL_NAME.match(model):
        raise NotFound(
            f"model {model!r} not found: model names are letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )


def check_url_version(version: str) -> None:
    """Refuse a version in a URL that is not digits, as TF Serving does."""
    if not URL_VERSION.match(version):
        raise BadInput(f"version {version!r} is not a number: use /versions/<digits>")
