"""The Python behind scripts/make-archive, scripts/serve and scripts/reload (import name fastai_serving_scripts).

Where the project's own files are: the shell wrappers beside these modules run them as
`python -m fastai_serving_scripts.<tool>`, from any folder.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_STORE = PROJECT_ROOT / "model_store"  # make-archive writes here; serve and reload read here
LOG_DIR = PROJECT_ROOT / "logs"
TORCHSERVE_CONFIG = PROJECT_ROOT / "config.properties"
LOG_CONFIG = PROJECT_ROOT / "log4j2.xml"
