"""make-archive --compile aot's check against eager: how far a package's outputs may be from eager's.

Kernels round floats differently (AVX-512 against AVX2, a compiled graph against eager), and the rounding of a
value grows with its size: a regression's values are compared relative to their size, probabilities absolutely.
tests/test_aot.py builds real packages; these are the rule's arithmetic, on the numbers seen in the field.
"""

from __future__ import annotations

import torch

from fastai_serving.compiled.aot import FP32_TOLERANCE, output_mismatch
from fastai_serving.contract.vocabulary import MULTI_LABEL, REGRESSION, SINGLE_LABEL

FIELD_DIFFERENCE = 1.07e-4  # an image regression of values from 0 to 9, built on an AVX-512 CPU (issue 28)


def test_a_regression_near_9_that_differs_by_float_rounding_is_accepted():
    eager = torch.tensor([[8.9], [7.25], [1.5]])
    assert output_mismatch(REGRESSION, eager + FIELD_DIFFERENCE, eager, FP32_TOLERANCE) == ""


def test_a_regression_that_differs_by_more_than_its_rounding_is_refused_relative_to_its_size():
    eager = torch.tensor([[40.0], [60.0]])
    refused = output_mismatch(REGRESSION, eager + torch.tensor([[0.0], [0.03]]), eager, FP32_TOLERANCE)
    assert (
        refused
        == "the package's values differ from eager's, relative to their size, by 5.00e-04 (at most 0.0001 allowed)"
    )


def test_regression_values_under_1_are_compared_absolutely():
    eager = torch.tensor([[0.5], [0.01]])
    assert "by 1.07e-04" in output_mismatch(REGRESSION, eager + FIELD_DIFFERENCE, eager, FP32_TOLERANCE)


def test_probabilities_are_compared_absolutely():
    eager = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    for task in (SINGLE_LABEL, MULTI_LABEL):
        refused = output_mismatch(task, eager + FIELD_DIFFERENCE, eager, FP32_TOLERANCE)
        assert refused == "the package's outputs differ from eager's by 1.07e-04 (at most 0.0001 allowed)"
