"""`make image-check` judges a container's answers against learn.predict: how it compares them."""

from __future__ import annotations

from harness.image_check import differences

EXPECTED = [[0.1, 0.9], [0.7, 0.3]]


def test_answers_equal_to_learn_predict_within_tolerance_pass():
    assert differences([[0.10004, 0.89996], [0.7, 0.3]], EXPECTED) == []


def test_a_missing_prediction_is_reported():
    assert differences([[0.1, 0.9]], EXPECTED) == ["1 predictions for 2 instances"]


def test_probabilities_that_do_not_sum_to_one_are_reported():
    assert differences([[0.1, 0.9], [0.7, 0.7]], EXPECTED) == ["instance 1: probabilities sum to 1.40000"]


def test_a_swapped_answer_is_reported():
    assert differences([[0.7, 0.3], [0.1, 0.9]], EXPECTED) == [
        "instance 0: probabilities differ from learn.predict by more than 0.0001",
        "instance 1: probabilities differ from learn.predict by more than 0.0001",
    ]
