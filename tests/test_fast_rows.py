"""The tabular and collab fast path (fastai_serving.engine.fast_rows): rows through the Learner's procs, vectorized.

Its tensors equal the ones fastai's test_dl builds, and its answers equal `learn.predict` on the
hostile rows the end-to-end tests send (nulls, unseen categories, integer categories sent as
floats, `<col>_na` flags), on boolean categories, and for a collab Learner; a Learner with a proc
the fast path does not know goes through fastai's test_dl.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from fastai_serving.engine import fast_rows
from fastai_serving.engine.learner import load_learner
from fastai_serving.engine.tabular import predict_rows, rows_frame
from harness.learners import TABULAR_CATEGORICAL, TABULAR_CONTINUOUS, tabular_frame

TOLERANCE = 1e-5
ROWS = [
    {"colour": "red", "shape": "round", "grade": 3, "size": 11.5, "weight": 52.0},
    {"colour": "blue", "shape": "flat", "grade": 1, "size": None, "weight": 61.2},
    {"colour": None, "shape": "square", "grade": 5, "size": 8.0, "weight": 40},
    {"colour": "purple", "shape": "hexagon", "grade": 99, "size": 14.25, "weight": 49.5, "note": "not a column"},
    {"colour": "green", "shape": "round", "grade": 2.0, "size": -3, "weight": 70.5},
]
COLLAB_ROWS = [
    {"user": 3, "item": "m4"},
    {"user": 12, "item": "m19"},
    {"user": 3000, "item": "m4"},
    {"user": 7, "item": None},
    {"user": 0.0, "item": "m0"},
]


def fastai_learner(export: Path):
    from fastai.learner import load_learner as fastai_load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        learn = fastai_load_learner(export)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    return learn


def fast_plan(served) -> fast_rows.RowPlan:
    plan = fast_rows.row_plan(served.learn)
    assert plan is not None, "the fast path was not taken"
    return plan


@pytest.mark.parametrize("model", ["tabular", "tabular_multilabel", "tabular_regressor", "tabular_multi_regressor"])
def test_each_tabular_task_answers_learn_predict_on_hostile_rows(small_learners, model):
    served, learn = load_learner(small_learners[model]), fastai_learner(small_learners[model])
    fast_plan(served)
    for row, prediction in zip(ROWS, predict_rows(served, ROWS, max_rows=2, fast=True), strict=True):
        _, _, expected = learn.predict(pd.Series(row))
        assert torch.allclose(prediction.output, expected.float(), atol=TOLERANCE, rtol=TOLERANCE)


def test_the_fast_paths_tensors_are_the_ones_fastais_test_dl_builds(small_learners):
    served = load_learner(small_learners["tabular"])
    frame = tabular_frame(rows=300, seed=3)[[*TABULAR_CATEGORICAL, *TABULAR_CONTINUOUS]].astype(object)
    rows = [{k: None if pd.isna(v) else v for k, v in row.items()} for row in frame.to_dict("records")] + ROWS
    cats, conts = fast_plan(served).tensors(rows)
    fastai_cats, fastai_conts = next(iter(served.learn.dls.test_dl(rows_frame(rows, served.columns), bs=len(rows))))
    assert torch.equal(cats, fastai_cats) and torch.equal(conts, fastai_conts)


def test_the_size_na_flag_is_the_models_last_category(small_learners):
    plan = fast_plan(load_learner(small_learners["tabular"]))
    cats, _ = plan.tensors(ROWS[:2])
    assert plan.cat_names[-1] == "size_na" and cats[:, -1].tolist() == [1, 2]  # False, True after #na#


@pytest.fixture(scope="module")
def boolean_category_learner(tmp_path_factory) -> Path:
    """A tabular classifier with a boolean categorical column ("fresh") beside the usual ones."""
    from fastai.tabular.all import Categorify, FillMissing, Normalize, TabularDataLoaders, tabular_learner

    frame = tabular_frame()
    frame["fresh"] = frame["weight"] > 50
    dls = TabularDataLoaders.from_df(
        frame,
        y_names="quality",
        cat_names=[*TABULAR_CATEGORICAL, "fresh"],
        cont_names=list(TABULAR_CONTINUOUS),
        procs=[Categorify, FillMissing, Normalize],
        valid_idx=list(range(200, len(frame))),
        bs=32,
        num_workers=0,
    )
    learn = tabular_learner(dls, layers=[16, 8])
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1, 1e-2)
    export = tmp_path_factory.mktemp("boolean") / "export.pkl"
    learn.export(export.resolve())
    return export


def test_boolean_categories_answer_learn_predict(boolean_category_learner):
    served, learn = load_learner(boolean_category_learner), fastai_learner(boolean_category_learner)
    rows = [{**row, "fresh": fresh} for row, fresh in zip(ROWS, [True, False, None, True, False], strict=True)]
    fast_plan(served)
    for row, prediction in zip(rows, predict_rows(served, rows, fast=True), strict=True):
        _, _, expected = learn.predict(pd.Series(row))
        assert torch.allclose(prediction.output, expected, atol=TOLERANCE)


def test_collab_rows_answer_fastais_get_preds(small_learners):
    served = load_learner(small_learners["collab"])
    learn = fastai_learner(small_learners["collab"])
    fast_plan(served)
    expected, _ = learn.get_preds(dl=learn.dls.test_dl(pd.DataFrame(COLLAB_ROWS)))
    answered = torch.stack([p.output for p in predict_rows(served, COLLAB_ROWS, max_rows=2, fast=True)])
    assert torch.allclose(answered.reshape(-1), expected.reshape(-1), atol=TOLERANCE)


class DoublesWeight:
    """A proc the fast path does not know (any TabularProc of a user's own)."""

    order = 50

    def __call__(self, to, **kwargs):
        to["weight"] = to["weight"] * 2
        return to


def test_a_learner_with_a_proc_the_fast_path_does_not_know_goes_through_test_dl(small_learners):
    served = load_learner(small_learners["tabular"])
    served.learn.dls.train_ds.procs.fs.append(DoublesWeight())
    assert fast_rows.row_plan(served.learn) is None


def test_with_the_fast_path_off_the_rows_go_through_a_test_dataloader(small_learners, monkeypatch):
    served = load_learner(small_learners["tabular"])
    frames = []
    real_test_dl = served.learn.dls.test_dl
    monkeypatch.setattr(
        served.learn.dls, "test_dl", lambda frame, **kw: frames.append(len(frame)) or real_test_dl(frame, **kw)
    )
    fast = [p.output for p in predict_rows(served, ROWS, fast=True)]
    assert frames == []
    slow = [p.output for p in predict_rows(served, ROWS, fast=False)]
    assert frames == [len(ROWS)]
    assert all(torch.allclose(a, b, atol=TOLERANCE) for a, b in zip(fast, slow, strict=True))
