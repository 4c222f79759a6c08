"""The words the fronts, the handler and the clients share: verbs, body forms, tasks, kinds, inputs.

Names only (no logic, no imports), so every part can speak them without pulling in anything else.
"""

from __future__ import annotations

# TF Serving's verbs: the part of the URL after the colon.
PREDICT, CLASSIFY, REGRESS = "predict", "classify", "regress"
VERBS = (PREDICT, CLASSIFY, REGRESS)

# Body forms (see bodies.py): raw bytes, one instance, rows, columns, :classify/:regress examples.
RAW, SINGLE, ROWS, COLUMNS, EXAMPLES = "raw", "single", "rows", "columns", "examples"

# The tasks a served Learner does (its metadata's "task").
SINGLE_LABEL = "classification"
MULTI_LABEL = "multilabel_classification"
REGRESSION = "regression"
SEGMENTATION = "segmentation"
CLASSIFIERS = (SINGLE_LABEL, MULTI_LABEL)

# signature_name: probabilities (TF Serving's default name, or none), or the original
# fastai-serving's answer, the predicted class index.
PROBABILITIES_SIGNATURES = ("", "serving_default", "predict")
CLASS_INDEX_SIGNATURE = "classes"

# The kinds of Learner served (make-archive detects and records it; the metadata's "kind").
VISION, TABULAR, TEXT, COLLAB = "vision", "tabular", "text", "collab"

# The input names the metadata advertises, and the one-instance shortcuts' keys: one image, one
# text, one tabular (or collaborative-filtering) row.
IMAGE_INPUT = "image_bytes"
TEXT_INPUT = "text"
ROW_INPUT = "row"
SHORTCUT_KEYS = {VISION: IMAGE_INPUT, TEXT: TEXT_INPUT, TABULAR: ROW_INPUT, COLLAB: ROW_INPUT}
