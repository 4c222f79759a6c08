"""The Python behind the `fastai-serving` command and scripts/make-archive, serve and reload.

The shell wrappers in this folder run these modules as `python -m fastai_serving_scripts.<tool>`;
an installed wheel runs them as `fastai-serving <tool>` (cli.py). TorchServe's configuration,
its logging configuration and the handler make-archive puts in every archive travel with this
package (torchserve/: in a checkout, links to the one copy of each at the project's root and in
handler/), so an installed wheel needs no checkout. The default folders (model_store/, logs/) are
the checkout's when run from one, else the working folder's.
"""

from pathlib import Path

PACKAGE_FILES = Path(__file__).resolve().parent / "torchserve"
TORCHSERVE_CONFIG = PACKAGE_FILES / "config.properties"
LOG_CONFIG = PACKAGE_FILES / "log4j2.xml"
HANDLER_FILE = PACKAGE_FILES / "torchserve_handler.py"  # TorchServe's entry point (handler/torchserve_handler.py)


def checkout_root() -> Path | None:
    """The project checkout these modules run from (an editable install, or scripts/*), or None when installed."""
    above = Path(__file__).resolve().parent.parent
    is_checkout = (above / "pyproject.toml").is_file() and (above / "handler" / "fastai_serving").is_dir()
    return above if is_checkout else None


_WORKING_ROOT = checkout_root() or Path()  # Path(): relative, so the working folder at the time of use
MODEL_STORE = _WORKING_ROOT / "model_store"  # make-archive writes here; serve and reload read here
LOG_DIR = _WORKING_ROOT / "logs"
