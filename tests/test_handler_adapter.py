"""The TorchServe adapter in-process: TorchServe's four verbs on a small Learner, with a stand-in context.

The context plays TorchServe's side of the handler contract (request headers, per-request
status); tests/test_torchserve_handler.py runs the same handler inside a real TorchServe.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastai_serving.contract.images_wire import images_body
from fastai_serving.contract.upstream import (
    BATCH_INSTANCES_HEADER,
    BATCH_SECONDS_HEADER,
    DEADLINE_HEADER,
    FAILURE_HEADER,
    FORWARD_INSTANCES_HEADER,
    QUEUE_SECONDS_HEADER,
    REQUEST_ID_HEADER,
    SENT_AT_HEADER,
    TASK_HEADER,
    VERB_HEADER,
    VERSION_HEADER,
)
from fastai_serving.engine import batching
from fastai_serving_shim.settings import env_name
from harness import PROJECT_ROOT

HANDLER_FILE = PROJECT_ROOT / "handler" / "torchserve_handler.py"


@dataclass
class Context:
    """What TorchServe hands a handler: the model's folder and config, each request's headers; it records statuses."""

    model_dir: Path
    model_yaml_config: dict = field(default_factory=dict)
    headers: list[dict] = field(default_factory=list)
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    response_headers: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def system_properties(self) -> dict:
        return {"model_dir": str(self.model_dir), "gpu_id": None}

    @property
    def manifest(self) -> dict:
        return {"model": {"serializedFile": "export.pkl", "modelVersion": "2.0"}}

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx] if idx < len(self.headers) else {}

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, content_type: str) -> None:
        pass

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value


def load_handler_module():
    """handler/torchserve_handler.py as TorchServe loads it: a file, not a package module."""
    spec = importlib.util.spec_from_file_location("torchserve_handler", HANDLER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classifier_handler(small_learners, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model_dir")
    shutil.copy(small_learners["classifier"], model_dir / "export.pkl")
    handler = load_handler_module().FastaiHandler()
    config = {"minWorkers": 1, "handler": {"max_batch": 2, "channels_last": False}}
    handler.initialize(Context(model_dir=model_dir, model_yaml_config=config))
    return handler


def b64_row(image: bytes) -> dict:
    return {"b64": base64.b64encode(image).decode()}


def handle(handler, bodies: list, headers: list[dict] | None = None) -> tuple[list, Context]:
    context = Context(model_dir=Path("."), headers=headers or [{} for _ in bodies])
    answers = handler.handle([{"body": body} for body in bodies], context)
    return [json.loads(answer) for answer in answers], context


def test_initialize_reads_the_archives_settings(classifier_handler):
    assert classifier_handler.settings.max_batch == 2 and classifier_handler.settings.channels_last is False
    assert classifier_handler.served.task == "classification"


def test_one_batch_answers_each_request_in_order_equal_to_learn_predict(classifier_handler, small_learners):
    images = [path.read_bytes() for path in sorted((small_learners["classifier"].parent / "images").glob("*.png"))[:5]]
    bodies = [
        {"instances": [b64_row(images[0]), b64_row(images[1]), b64_row(images[2])]},
        images[3],
        {"image_bytes": b64_row(images[4])},
    ]
    answers, context = handle(classifier_handler, bodies)
    assert context.statuses == {}
    from fastai.vision.core import PILImage

    learn = classifier_handler.served.learn
    with learn.no_bar():
        expected = [learn.predict(PILImage.create(image)) for image in images]
    for probabilities, (_, _, wanted) in zip(answers[0]["predictions"], expected[:3], strict=True):
        assert probabilities == pytest.approx(wanted.tolist(), abs=1e-5)
    assert answers[1]["prediction"] == expected[3][0] and answers[2]["prediction"] == expected[4][0]


def test_a_bad_request_fails_alone_with_its_own_status_and_kind(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    bodies = [{"instances": [b64_row(image)]}, {"instances": [b64_row(image), {"b64": "AAAA"}]}, {"instances": []}]
    answers, context = handle(classifier_handler, bodies)
    assert len(answers[0]["predictions"]) == 1
    assert context.statuses[1][0] == 400 and answers[1] == {
        "error": "instance 1 is not an image this server can decode"
    }
    assert context.statuses[2][0] == 400 and "'instances' is empty" in answers[2]["error"]
    assert 0 not in context.statuses
    kinds = {idx: headers.get(FAILURE_HEADER) for idx, headers in context.response_headers.items()}
    assert kinds == {0: None, 1: "bad_input", 2: "bad_input"}  # the fronts read the kind, not the status


def test_the_images_body_is_answered_as_the_row_form_equal_to_json(classifier_handler, small_learners):
    images = [path.read_bytes() for path in sorted((small_learners["classifier"].parent / "images").glob("*.png"))[:3]]
    answers, context = handle(
        classifier_handler, [bytearray(images_body(images)), {"instances": list(map(b64_row, images))}]
    )
    assert context.statuses == {} and answers[0] == answers[1] and len(answers[0]["predictions"]) == 3


def test_a_bad_image_in_an_images_body_fails_that_request_alone(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    answers, context = handle(classifier_handler, [images_body([image, b"not an image"]), images_body([image])])
    assert context.statuses[0][0] == 400 and answers[0] == {
        "error": "instance 1 is not an image this server can decode"
    }
    assert 1 not in context.statuses and len(answers[1]["predictions"]) == 1


def test_a_request_past_its_deadline_is_answered_at_once_without_decoding_or_inference(
    classifier_handler, small_learners
):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    forward_passes = []
    hook = classifier_handler.served.learn.model.register_forward_pre_hook(lambda *_: forward_passes.append(1))
    now = time.time()
    try:
        late = {SENT_AT_HEADER: f"{now - 5:.3f}", DEADLINE_HEADER: f"{now - 1:.3f}"}  # its client gave up a second ago
        answers, context = handle(
            classifier_handler, [{"instances": [{"b64": "not even base64"}]}], [late]
        )  # an undecodable image: had it been read, it would have failed as bad input
        assert forward_passes == []
        assert context.statuses[0][0] == 504 and context.response_headers[0][FAILURE_HEADER] == "timeout"
        assert "the client's deadline passed" in answers[0]["error"]
        on_time = {SENT_AT_HEADER: f"{now:.3f}", DEADLINE_HEADER: f"{now + 60:.3f}"}
        answers, context = handle(classifier_handler, [{"instances": [b64_row(image)]}], [on_time])
        assert context.statuses == {} and len(answers[0]["predictions"]) == 1 and forward_passes
    finally:
        hook.remove()


def test_every_answer_says_how_long_its_batch_took_for_how_many_instances(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    _, context = handle(classifier_handler, [{"instances": [b64_row(image)] * 3}, {"instances": [b64_row(image)]}])
    for headers in context.response_headers.values():
        assert float(headers[BATCH_SECONDS_HEADER]) > 0 and headers[BATCH_INSTANCES_HEADER] == "4"
        assert headers[FORWARD_INSTANCES_HEADER] == "2"  # the archive's max_batch


def test_the_batch_line_and_a_failed_requests_line_quote_each_requests_id(classifier_handler, small_learners, caplog):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    ids = [{REQUEST_ID_HEADER: "good-1"}, {REQUEST_ID_HEADER: "bad-2"}, {REQUEST_ID_HEADER: "not well formed"}]
    with caplog.at_level("INFO"):
        handle(classifier_handler, [{"instances": [b64_row(image)]}, {"instances": [{"b64": "AAAA"}]}, image], ids)
    assert "request_ids=good-1,bad-2,-" in caplog.text  # an id no log line should hold is left out
    assert "fastai-serving request bad-2 failed (bad_input)" in caplog.text


def test_every_answer_says_how_long_it_waited_from_its_sending_to_its_batch(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    sent = {SENT_AT_HEADER: f"{time.time() - 2:.3f}"}
    _, context = handle(classifier_handler, [{"instances": [b64_row(image)]}, image], [sent, {}])
    assert float(context.response_headers[0][QUEUE_SECONDS_HEADER]) >= 1.99  # sent-at is in milliseconds
    assert QUEUE_SECONDS_HEADER not in context.response_headers[1]  # no front said when it sent it


def stage_counts() -> dict[str, float]:
    """The handler's metrics' observation counts in this process, by series (the handler's model label is "")."""
    from prometheus_client import REGISTRY

    counted = {}
    for name in ("fastai_serving_stage_duration_seconds", "fastai_serving_queue_wait_seconds",
                 "fastai_serving_batch_requests", "fastai_serving_batch_instances"):  # fmt: skip
        for stage in ("decode", "transforms", "forward", "encode", None):
            labels = {"model": ""} | ({"stage": stage} if stage else {})
            value = REGISTRY.get_sample_value(f"{name}_count", labels)
            if value is not None:
                counted[f"{name}:{stage}" if stage else name] = value
    return counted


def test_a_batch_is_measured_per_stage_once_per_instance_and_its_size_and_waits_once(classifier_handler,
                                                                                     small_learners):  # fmt: skip
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    before = stage_counts()
    sent = {SENT_AT_HEADER: f"{time.time():.3f}"}
    handle(classifier_handler, [{"instances": [b64_row(image)] * 3}, image, {"instances": []}], [sent, sent, {}])
    after = stage_counts()
    grown = {name: after[name] - before.get(name, 0) for name in after}
    stages = ("decode", "transforms", "forward", "encode")
    assert {stage: grown[f"fastai_serving_stage_duration_seconds:{stage}"] for stage in stages} == dict.fromkeys(
        stages, 4
    )  # the four instances predicted; the empty request failed
    assert grown["fastai_serving_batch_requests"] == grown["fastai_serving_batch_instances"] == 1
    assert grown["fastai_serving_queue_wait_seconds"] == 2  # the two requests a front said it sent


def test_the_forward_stage_is_the_models_own_time(classifier_handler, small_learners):
    from prometheus_client import REGISTRY

    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    forward_seconds = []
    model = classifier_handler.served.learn.model
    pre = model.register_forward_pre_hook(lambda *_: forward_seconds.append(-time.perf_counter()))
    post = model.register_forward_hook(lambda *_: forward_seconds.append(time.perf_counter()))
    labels = {"model": "", "stage": "forward"}
    before = REGISTRY.get_sample_value("fastai_serving_stage_duration_seconds_sum", labels) or 0
    try:
        handle(classifier_handler, [{"instances": [b64_row(image)] * 3}])
    finally:
        pre.remove(), post.remove()
    measured = REGISTRY.get_sample_value("fastai_serving_stage_duration_seconds_sum", labels) - before
    assert measured == pytest.approx(sum(forward_seconds), rel=0.2, abs=1e-3)


def test_every_answer_names_the_version_that_answered_and_its_task(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    _, context = handle(classifier_handler, [{"instances": [b64_row(image)]}, {"instances": []}])
    named = {VERSION_HEADER: "2.0", TASK_HEADER: "classification"}
    named_in = {
        idx: {key: headers.get(key) for key in (*named, FAILURE_HEADER)}
        for idx, headers in context.response_headers.items()
    }
    assert named_in == {0: {**named, FAILURE_HEADER: None}, 1: {**named, FAILURE_HEADER: "bad_input"}}


def test_the_verb_header_selects_classify(classifier_handler, small_learners):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    answers, _ = handle(classifier_handler, [{"examples": [b64_row(image)]}], [{VERB_HEADER.title(): "classify"}])
    labels = [label for label, _ in answers[0]["results"][0]]
    assert labels == classifier_handler.served.classes


def test_a_forward_pass_that_returns_too_few_results_never_answers_with_anothers(
    classifier_handler, small_learners, monkeypatch
):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    real = batching.predict_images
    monkeypatch.setattr(
        batching, "predict_images", lambda served, images, max_batch, **options: real(served, images, max_batch)[:1]
    )
    answers, context = handle(
        classifier_handler, [{"instances": [b64_row(image)]}, {"instances": [b64_row(image)] * 2}]
    )
    # The whole batch came back one short, so each request was predicted alone: the one-image request is right,
    # and the two-image one, short again, fails by itself.
    assert len(answers[0]["predictions"]) == 1 and 0 not in context.statuses
    assert context.statuses[1][0] == 500


def test_a_message_quoting_non_ascii_input_goes_to_torchserve_as_an_ascii_reason_phrase(
    classifier_handler, small_learners
):
    image = sorted((small_learners["classifier"].parent / "images").glob("*.png"))[0].read_bytes()
    answers, context = handle(classifier_handler, [{"instances": [b64_row(image)], "signature_name": "größe→"}])
    assert answers[0] == {"error": "unknown signature_name 'größe→': this model serves 'serving_default' "
                          "(probabilities) and 'classes' (class indices)"}  # fmt: skip
    status, phrase = context.statuses[0]
    assert status == 400 and phrase.isascii() and "gr\\xf6\\xdfe\\u2192" in phrase


# --- Tabular and text Learners ---------------------------------------------------------------------------

ROWS = [
    {"colour": "red", "shape": "round", "grade": 3, "size": 11.5, "weight": 52.0},
    {"colour": "blue", "shape": "flat", "grade": 1, "size": None, "weight": 61.2},
    {"colour": "purple", "shape": "square", "grade": 99, "size": 8.0, "weight": 40, "note": "ignored"},
    {"colour": None, "shape": "round", "grade": 2, "size": -1.25, "weight": 55.5},
    {"colour": "green", "shape": "flat", "grade": 5, "size": 13.0, "weight": 47.0},
]
TEXTS = ["Great!", "a film", "The plot was dull and the actor awful, " * 10 + "but lovely.", "x", "", "superb " * 5]


def handler_for(export: Path, model_dir: Path, settings: dict):
    shutil.copy(export, model_dir / "export.pkl")
    handler = load_handler_module().FastaiHandler()
    handler.initialize(Context(model_dir=model_dir, model_yaml_config={"minWorkers": 1, "handler": settings}))
    return handler


def fastai_learner(export: Path):
    """The export as fastai loads it, for `learn.predict`."""
    import warnings

    from fastai.learner import load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        learn = load_learner(export)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    return learn


@pytest.fixture(scope="module")
def tabular_handler(small_learners, tmp_path_factory):
    return handler_for(
        small_learners["tabular"], tmp_path_factory.mktemp("tabular"), {"kind": "tabular", "max_row_batch": 2}
    )


@pytest.fixture(scope="module")
def text_handler(small_learners, tmp_path_factory):
    settings = {"kind": "text", "max_batch": 2, "max_text_chars": 500}
    return handler_for(small_learners["text"], tmp_path_factory.mktemp("text"), settings)


def test_a_batch_of_row_requests_is_one_set_of_tensors_and_each_row_answers_learn_predict(
    tabular_handler, small_learners, monkeypatch
):
    import pandas as pd

    from fastai_serving.engine.fast_rows import RowPlan

    frames = []  # the rows of each call that turns rows into the model's tensors (the fast path's)
    real_tensors = RowPlan.tensors
    monkeypatch.setattr(RowPlan, "tensors", lambda plan, rows: frames.append(rows) or real_tensors(plan, rows))
    passes = []
    hook = tabular_handler.served.learn.model.register_forward_hook(lambda module, args, output: passes.append(1))
    columns = {name: [row[name] for row in ROWS[2:4]] for name in ROWS[0]}
    try:
        answers, context = handle(tabular_handler, [{"instances": ROWS[:2]}, {"inputs": columns}, {"row": ROWS[4]}])
    finally:
        hook.remove()
    assert context.statuses == {} and len(frames) == 1 and len(frames[0]) == 5
    assert len(passes) == 3  # max_row_batch 2: the one frame goes through the model 2 + 2 + 1 rows at a time
    learn = fastai_learner(small_learners["tabular"])
    answered = [*answers[0]["predictions"], *answers[1]["outputs"], answers[2]["probabilities"]]
    for row, probabilities in zip(ROWS, answered, strict=True):
        _, _, expected = learn.predict(pd.Series(row))
        assert probabilities == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_bad_row_fails_its_own_request_and_the_batch_goes_on(tabular_handler):
    bad = {key: value for key, value in ROWS[0].items() if key != "weight"}
    answers, context = handle(
        tabular_handler, [{"instances": ROWS[:2]}, {"instances": [ROWS[1], bad]}, {"row": ROWS[3]}]
    )
    assert context.statuses[1][0] == 400 and set(context.statuses) == {1}
    assert answers[1] == {
        "error": "instance 1 has no column 'weight' (this model reads 'colour', 'shape', 'grade', 'size', 'weight')"
    }
    assert len(answers[0]["predictions"]) == 2 and "probabilities" in answers[2]


def test_the_handler_describes_a_tabular_learners_columns(tabular_handler):
    described = tabular_handler.served.describe()
    assert [(c["name"], c["kind"]) for c in described["inputs"]] == [
        ("colour", "categorical"), ("shape", "categorical"), ("grade", "categorical"),
        ("size", "continuous"), ("weight", "continuous"),
    ]  # fmt: skip
    assert described["kind"] == "tabular" and described["input"] == "row" and described["targets"] == ["quality"]


def test_texts_of_different_lengths_across_requests_answer_learn_predict(text_handler, small_learners):
    answers, context = handle(
        text_handler, [{"instances": TEXTS[:3]}, {"text": TEXTS[3]}, {"inputs": {"text": TEXTS[4:]}}]
    )
    assert context.statuses == {}
    learn = fastai_learner(small_learners["text"])
    answered = [*answers[0]["predictions"], answers[1]["probabilities"], *answers[2]["outputs"]]
    for text, probabilities in zip(TEXTS, answered, strict=True):
        assert probabilities == pytest.approx(learn.predict(text)[2].tolist(), abs=1e-5)


def test_the_archives_text_limit_bounds_each_text(text_handler):
    answers, context = handle(text_handler, [{"instances": ["fine", "y" * 501]}, {"instances": ["fine"]}])
    assert context.statuses[0][0] == 400 and 1 not in context.statuses
    assert answers[0] == {"error": "instance 1 is 501 characters long, over the limit of 500"}


def test_a_worker_refuses_an_archive_whose_recorded_kind_is_not_the_learners(small_learners, tmp_path):
    from fastai_serving.contract.errors import ModelError

    with pytest.raises(
        ModelError, match="make-archive found a vision Learner in export.pkl, this worker a tabular one"
    ):
        handler_for(small_learners["tabular"], tmp_path, {"kind": "vision"})


def test_texts_that_fastais_get_preds_pads_wrongly_in_one_batch_are_answered_as_learn_predict(
    text_handler, small_learners, monkeypatch
):
    # 11, 6 and 3 tokens with chunks of 8: fastai pads "superb film" to start at the last chunk, where
    # its encoder runs only the leading rows still holding text, and skips it (see fastai_serving.engine.text).
    texts = ["the movie was great and the plot was lovely too", "the film was awful indeed", "superb film"]
    learn = fastai_learner(small_learners["text"])
    expected = [learn.predict(text)[2] for text in texts]
    fastai_batch, _ = learn.get_preds(dl=learn.dls.test_dl(texts, bs=16))
    assert (fastai_batch[2] - expected[2]).abs().max() > 1e-3
    monkeypatch.setattr(text_handler, "settings", dataclasses.replace(text_handler.settings, max_batch=16))
    answers, _ = handle(text_handler, [{"instances": texts}])
    for answer, wanted in zip(answers[0]["predictions"], expected, strict=True):
        assert answer == pytest.approx(wanted.tolist(), abs=1e-5)


def test_the_workers_read_every_models_longest_wait_from_the_settings_variable_of_that_name(monkeypatch):
    module = load_handler_module()
    assert module.MAX_QUEUE_ENV == env_name("max_queue_s")
    settings = module.HandlerSettings(max_queue_s=12.0)
    monkeypatch.delenv(module.MAX_QUEUE_ENV, raising=False)
    assert module.max_queue_s(settings) == 12.0  # the archive's
    monkeypatch.setenv(module.MAX_QUEUE_ENV, "3")
    assert module.max_queue_s(settings) == 3.0  # serve's, for every model
