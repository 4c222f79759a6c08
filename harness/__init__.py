"""What the tests, the benchmarks and the demo share: small real Learners, the demo model, the
benchmark workload, the real servers on free loopback ports, and checked load.

Not part of the served product: nothing in `fastai_serving` or `shim` imports it.
"""
