"""What the tests, the benchmarks and the dev tools share: small real Learners, the demo model's
workload, the real servers on free loopback ports, checked load, and `make protos`.

Not part of the served product and not packaged: nothing in `fastai_serving` or `fastai_serving_shim`
imports it, and it is imported from a checkout only (pytest's `pythonpath`, or `python -m` from the root).
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout this package is in
