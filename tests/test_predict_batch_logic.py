"""predict-batch's own logic, in-process: tile math, sharding, resume scans, output encodings, retries, progress.

The end-to-end runs against the real servers are in test_predict_batch.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf import struct_pb2

from fastai_serving_client import cli
from fastai_serving_client.concurrency import Concurrency
from fastai_serving_client.fetch import Fetcher
from fastai_serving_client.grpc_predictor import GrpcPredictor, grpc_target, predictions_of
from fastai_serving_client.predictor import InputRejected, ServerFailed
from fastai_serving_client.progress import Progress, duration
from fastai_serving_client.rest_predictor import RestPredictor, request_body
from fastai_serving_client.retry import Backoff, retry_after_s
from fastai_serving_client.runner import BatchRun, Outcome, Writer, predict_items
from fastai_serving_client.sinks import CsvSink, GeoJsonSink, JsonLinesSink, SinkError, masked, open_sink, tile_feature
from fastai_serving_client.sources import FolderSource, ListSource, Shard, TileSource, parse_shard, select
from fastai_serving_client.tiles import Tile, parse_tile, tile_bounds, tile_polygon, tile_url
from fastai_serving_protos import tensorflow_serving_pb2 as serving
from fastai_serving_protos import tensorflow_serving_pb2_grpc as serving_grpc
from fastai_serving_protos.tensorflow_core_pb2 import DataType, TensorProto, TensorShapeProto
from harness.waiting import wait_for

MERCATOR_LIMIT = 85.0511287798066  # the latitude where web mercator's square world ends

# --- tiles ---------------------------------------------------------------------------------------------------------


def test_the_zoom_0_tile_is_the_whole_web_mercator_world():
    assert tile_bounds(Tile(0, 0, 0)) == pytest.approx((-180, -MERCATOR_LIMIT, 180, MERCATOR_LIMIT))


def test_tile_y_counts_down_from_the_north_as_xyz_imagery_does():
    assert tile_bounds(Tile(1, 0, 1)) == pytest.approx((0, 0, 180, MERCATOR_LIMIT))
    assert tile_bounds(Tile(0, 1, 1)) == pytest.approx((-180, -MERCATOR_LIMIT, 0, 0))


def test_a_zoom_18_tile_is_about_150_metres_wide_at_the_equator():
    west, south, east, north = tile_bounds(Tile(2**17, 2**17, 18))
    assert (west, north) == pytest.approx((0, 0), abs=1e-12)
    assert (east - west) * 111_320 == pytest.approx(152.9, abs=0.1)  # metres per degree of longitude at the equator
    assert south < 0


def test_a_tile_polygon_is_a_closed_counter_clockwise_ring_of_its_bounds():
    ring = tile_polygon(Tile(3, 5, 4))["coordinates"][0]
    west, south, east, north = tile_bounds(Tile(3, 5, 4))
    assert ring[0] == ring[-1] == [west, south]
    assert {tuple(point) for point in ring} == {(west, south), (east, south), (east, north), (west, north)}
    signed_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False))
    assert signed_area > 0


@pytest.mark.parametrize(
    "line, why", [("1-2", "not an x-y-z tile"), ("a-b-c", "not an x-y-z tile"), ("4-0-2", "below 2^z = 4")]
)
def test_a_bad_tile_line_says_what_is_wrong(line, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_tile(line)


def test_a_tile_url_fills_the_xyz_template():
    assert tile_url("http://imagery/{z}/{x}/{y}.png?key={k}", Tile(1, 2, 3)) == "http://imagery/3/1/2.png?key={k}"


# --- sources and shards --------------------------------------------------------------------------------------------


def test_shards_split_the_keys_with_every_key_in_exactly_one():
    keys = [f"k{i:03d}" for i in range(100)]
    shards = [select(keys, Shard(index, 3)) for index in range(3)]
    assert sorted(key for shard in shards for key in shard) == keys
    assert [len(shard) for shard in shards] == [34, 33, 33]
    assert shards[1][:3] == ["k001", "k004", "k007"]


def test_a_repeated_key_is_taken_once_and_does_not_shift_the_shards():
    assert select(["a", "b", "a", "c", "b", "d"], Shard(1, 2)) == ["b", "d"]


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "0/0", "a/b"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ValueError):
        parse_shard(text)


def test_a_folder_gives_its_images_by_sorted_relative_path(tmp_path):
    for name in ["b/2.png", "a.JPG", "b/1.jpeg", ".hidden/x.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = FolderSource(tmp_path)
    assert list(source.keys()) == ["a.JPG", "b/1.jpeg", "b/2.png"]
    assert source.ignored == 1
    assert source.locate("b/1.jpeg") == str(tmp_path / "b" / "1.jpeg")


def test_a_list_reads_relative_paths_from_its_own_folder_and_urls_as_they_are(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n\nhttps://imagery/1.png\n/abs/b.png\n")
    source = ListSource(listing)
    assert list(source.keys()) == ["a.png", "https://imagery/1.png", "/abs/b.png"]
    assert [source.locate(key) for key in source.keys()] == [
        str(tmp_path / "a.png"),
        "https://imagery/1.png",
        "/abs/b.png",
    ]


def test_a_tile_list_keeps_a_bad_line_as_a_key_that_fails_when_located(tmp_path):
    tiles = tmp_path / "tiles.txt"
    tiles.write_text("1-2-3\nnot-a-tile\n 4-5-6 \n")
    source = TileSource(tiles, "http://imagery/{z}/{x}/{y}.png")
    assert list(source.keys()) == ["1-2-3", "not-a-tile", "4-5-6"]
    with pytest.raises(ValueError, match="not an x-y-z tile"):
        source.locate("not-a-tile")


def test_an_imagery_template_without_xyz_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        TileSource(tmp_path / "tiles.txt", "http://imagery/{z}/{x}.png")


# --- file destinations: commit, resume scan --------------------------------------------------------------------------


def test_jsonl_lines_are_key_and_prediction(tmp_path):
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    sink.commit([("a.png", [0.25, 0.75]), ("b.png", [1.0, 0.0])])
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == [{"key": "a.png", "prediction": [0.25, 0.75]}, {"key": "b.png", "prediction": [1.0, 0.0]}]


def test_a_rerun_finds_the_committed_keys_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"key":"a","prediction":[1]}\n{"key":"b","prediction":[2]}\n{"key":"c","predic')
    sink = JsonLinesSink(path)
    assert sink.done_keys() == {"a", "b"}
    assert sink.repaired_bytes == len('{"key":"c","predic')
    sink.commit([("c", [3])])
    sink.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_a_file_with_a_foreign_line_is_left_alone_with_the_line_named(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"key":"a","prediction":[1]}\nhello\n{"key":"b","prediction":[2]}\n')
    with pytest.raises(SinkError, match="line 2"):
        JsonLinesSink(path)
    assert path.read_text().count("\n") == 3


def test_two_runs_cannot_write_one_file(tmp_path):
    first = JsonLinesSink(tmp_path / "out.jsonl")
    with pytest.raises(SinkError, match="another predict-batch is writing"):
        JsonLinesSink(tmp_path / "out.jsonl")
    first.close()


def test_csv_is_chip_n_scales_download_shape_read_by_any_csv_reader_and_by_convert_geojson(tmp_path):
    sink = CsvSink(tmp_path / "out.csv")
    sink.commit([("5-9-4", [0.125, 0.875]), ("a,b.png", [1.0])])
    sink.close()
    text = (tmp_path / "out.csv").read_text()
    assert text.splitlines()[0] == "tile,output"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["tile", "output"], ["5-9-4", "[0.125,0.875]"], ["a,b.png", "[1.0]"]]
    assert json.loads(",".join(rows[1][1:])) == [0.125, 0.875]  # convert-geojson joins the fields after the first


def test_a_csv_rerun_skips_its_keys(tmp_path):
    first = CsvSink(tmp_path / "out.csv")
    first.commit([("1-2-3", [0.5, 0.5])])
    first.close()
    sink = CsvSink(tmp_path / "out.csv")
    assert sink.done_keys() == {"1-2-3"}
    sink.close()


def test_a_csv_without_the_header_is_not_taken_for_ours(tmp_path):
    (tmp_path / "out.csv").write_text("id,value\n1,2\n")
    with pytest.raises(SinkError, match="first line is not tile,output"):
        CsvSink(tmp_path / "out.csv")


def test_failures_are_recorded_and_a_key_that_later_succeeds_leaves_the_record(tmp_path):
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    sink.record_failures([("a", "imagery: HTTP 404"), ("b", "the server answered 400: not an image")])
    sink.close()
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    assert sink.earlier_failures() == {"a": "imagery: HTTP 404", "b": "the server answered 400: not an image"}
    sink.commit([("a", [1.0])])
    sink.close()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl.failed.jsonl").read_text().splitlines()]
    assert records == [{"key": "b", "reason": "the server answered 400: not an image"}]


def test_no_failures_left_means_no_failures_file(tmp_path):
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    sink.record_failures([("a", "imagery: HTTP 500")])
    sink.commit([("a", [1.0])])
    sink.close()
    assert not (tmp_path / "out.jsonl.failed.jsonl").exists()


# --- GeoJSON ------------------------------------------------------------------------------------------------------


def test_a_tile_feature_has_its_polygon_and_rounded_probabilities():
    feature = tile_feature("3-5-4", [0.1234, 0.8766], None)
    assert feature["geometry"] == tile_polygon(Tile(3, 5, 4))
    assert feature["properties"] == {"tile": "3-5-4", "p0": 0.12, "p1": 0.88}


def test_the_threshold_compares_the_rounded_probability_as_convert_geojson_does():
    assert tile_feature("1-1-1", [0.501, 0.499], (1, 0.5)) is not None  # 0.499 rounds to 0.5
    assert tile_feature("1-1-1", [0.506, 0.494], (1, 0.5)) is None
    assert tile_feature("1-1-1", [0.3, 0.7], (0, 0.5)) is None


def test_a_geojson_is_written_from_its_results_at_close(tmp_path):
    sink = GeoJsonSink(tmp_path / "out.geojson", threshold=(1, 0.5))
    sink.commit([("0-0-1", [0.2, 0.8]), ("1-0-1", [0.9, 0.1])])
    assert sink.close() == f"wrote {tmp_path / 'out.geojson'}: 1 of 2 tiles (class 1 >= 0.5)"
    collection = json.loads((tmp_path / "out.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert [feature["id"] for feature in collection["features"]] == ["0-0-1"]
    assert (tmp_path / "out.geojson.jsonl").exists()


def test_geojson_needs_probabilities():
    with pytest.raises(ValueError, match="needs a list of probabilities"):
        tile_feature("0-0-0", [[0, 1], [1, 0]], None)


@pytest.mark.parametrize(
    "out, threshold, tiles, why",
    [
        ("out.geojson", None, False, "needs tiles"),
        ("out.jsonl", (1, 0.5), False, "applies to a .geojson output only"),
        ("out.txt", None, False, "give a .jsonl, .csv or .geojson file"),
        ("postgresql://db/x", None, False, None),
    ],
)
def test_the_destination_is_told_by_the_form_of_out(tmp_path, out, threshold, tiles, why):
    if why is None:
        with pytest.raises(ValueError, match="--table"):
            open_sink(out, table="bad name", threshold=threshold, tiles=tiles)
        return
    with pytest.raises(ValueError, match=why):
        open_sink(str(tmp_path / out), table="results", threshold=threshold, tiles=tiles)


def test_a_database_password_is_never_printed():
    assert masked("postgresql://chips:s3cret@db:5432/tiles") == "postgresql://chips:***@db:5432/tiles"
    assert masked("postgres://db/tiles") == "postgres://db/tiles"


# --- sending: retries, refusals, splitting ----------------------------------------------------------------------


class ScriptedServer:
    """A loopback HTTP server answering each POST with the next (status, headers, body) of a script."""

    def __init__(self, answers: list[tuple[int, dict, bytes]], metadata: dict | None = None) -> None:
        self.answers, self.bodies, self.headers, self.metadata = list(answers), [], [], metadata
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps(server.metadata or {"error": "no metadata"}).encode()
                self.send_response(200 if server.metadata else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                server.headers.append(dict(self.headers))
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, headers, body = server.answers.pop(0)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def predictions(*values) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"predictions": list(values)}).encode()


def error(status: int, message: str, **headers: str) -> tuple[int, dict, bytes]:
    return status, headers, json.dumps({"error": message}).encode()


def predictor_for(server: ScriptedServer, tries: int = 3, model: str | None = None) -> RestPredictor:
    return RestPredictor(server.url, model, threading.Event(), Backoff(tries=tries, first_s=0.01))


def test_requests_are_tf_servings_row_form_as_chip_n_scale_sends_them():
    assert json.loads(request_body([b"\x89PNG"])) == {"instances": [{"image_bytes": {"b64": "iVBORw=="}}]}


def test_a_503_is_tried_again_after_the_servers_retry_after():
    server = ScriptedServer([error(503, "no ready worker", **{"Retry-After": "1"}), predictions([0.1, 0.9])])
    try:
        predictor = predictor_for(server, model="digits")
        assert predictor.endpoint == f"{server.url}/v1/models/digits:predict"
        assert predictor.predict([b"image"]) == [[0.1, 0.9]]
        assert len(server.bodies) == 2
    finally:
        server.close()


def test_a_refusal_is_sent_again_after_its_fractional_retry_after_and_never_counts_as_a_try():
    refusals = [error(429, "the model is full: retry", **{"Retry-After": "0.01"})] * 5
    server = ScriptedServer([*refusals, predictions([0.1, 0.9])])
    concurrency = Concurrency(1, 8)
    try:
        predictor = RestPredictor(
            server.url, None, threading.Event(), Backoff(tries=2, first_s=600), observer=concurrency
        )
        assert predictor.predict([b"image"]) == [[0.1, 0.9]]  # 5 refusals with 2 tries; a 600 s backoff never taken
        assert len(server.bodies) == 6 and concurrency.refusals == 5
    finally:
        server.close()


def test_requests_carry_no_deadline_header_so_the_servers_queue_target_governs_them():
    server = ScriptedServer([predictions([1.0])])
    try:
        RestPredictor(server.url, None, threading.Event(), timeout_s=42.5).predict([b"image"])
        assert server.headers[0].get("X-Request-Timeout") is None
    finally:
        server.close()


def test_a_server_still_unavailable_after_every_try_stops_the_run():
    server = ScriptedServer([error(504, "timeout")] * 3)
    try:
        with pytest.raises(ServerFailed, match="after 3 tries"):
            predictor_for(server).predict([b"image"])
    finally:
        server.close()


def test_a_refused_input_is_not_tried_again():
    server = ScriptedServer([error(400, "instance 0: bytes that are not an image")])
    try:
        with pytest.raises(InputRejected, match="400: instance 0: bytes that are not an image"):
            predictor_for(server).predict([b"junk"])
        assert len(server.bodies) == 1
    finally:
        server.close()


def test_an_unknown_model_stops_the_run():
    server = ScriptedServer([error(404, "model 'nope' not found")])
    try:
        with pytest.raises(ServerFailed, match="404: model 'nope' not found"):
            predictor_for(server, model="nope").predict([b"image"])
    finally:
        server.close()


def test_a_count_of_predictions_that_does_not_match_stops_the_run():
    server = ScriptedServer([predictions([1.0])])
    try:
        with pytest.raises(ServerFailed, match="1 predictions for 2 images"):
            predictor_for(server).predict([b"a", b"b"])
    finally:
        server.close()


def test_class_names_come_from_fastai_servings_metadata_and_none_from_other_servers():
    metadata = {"metadata": {"fastai": {"task": "classification", "classes": ["background", "building"]}}}
    ours, other = ScriptedServer([], metadata), ScriptedServer([])
    try:
        assert predictor_for(ours, model="buildings").class_names() == ["background", "building"]
        assert predictor_for(other).class_names() is None
    finally:
        ours.close()
        other.close()


def test_retry_after_reads_seconds_fractions_of_them_and_http_dates():
    assert retry_after_s("7") == 7
    assert retry_after_s("0.5") == 0.5
    assert retry_after_s("-1") is None and retry_after_s("nan") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == pytest.approx(10)
    assert retry_after_s("soon") is None


def test_backoff_doubles_to_its_cap_and_obeys_retry_after_up_to_five_minutes():
    backoff = Backoff(tries=10, first_s=1, max_s=60)
    assert 0.8 <= backoff.delay_s(1) <= 1.2
    assert 6.4 <= backoff.delay_s(4) <= 9.6
    assert 48 <= backoff.delay_s(9) <= 72
    assert backoff.delay_s(1, retry_after_s=12) == 12
    assert backoff.delay_s(1, retry_after_s=3600) == 300


# --- sending over gRPC: TF Serving's PredictionService --------------------------------------------------------------


class ScriptedGrpcServer:
    """A loopback gRPC server answering each Predict with the next of a script: a PredictResponse or an error."""

    def __init__(self, answers: list, metadata: serving.GetModelMetadataResponse | None = None, **options: int):
        self.answers, self.requests, self.metadata = list(answers), [], metadata
        self.deadlines: list[float] = []  # each call's time left, as the server sees it (endless: none sent)
        self.cancelled = threading.Event()
        server = self

        class Servicer(serving_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802
                server.requests.append(request)
                server.deadlines.append(context.time_remaining())
                answer = server.answers.pop(0)
                if answer == HOLD:  # no answer until the client gives up on the call
                    context.add_callback(server.cancelled.set)
                    server.cancelled.wait(timeout=30)
                    return serving.PredictResponse()
                if isinstance(answer, serving.PredictResponse):
                    return answer
                code, details, trailing = answer
                context.set_trailing_metadata(trailing)
                context.abort(code, details)

            def GetModelMetadata(self, request, context):  # noqa: N802
                server.requests.append(request)
                if server.metadata is None:  # TF Serving's answer to a field it does not know
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field fastai is not supported")
                return server.metadata

        self.server = grpc.server(ThreadPoolExecutor(4), options=[(f"grpc.{k}", v) for k, v in options.items()])
        serving_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def __enter__(self) -> ScriptedGrpcServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop(0)


HOLD = "hold"  # a scripted gRPC answer: none, until the client cancels the call


def tensor(dtype: int, shape: list[int], **values) -> TensorProto:
    return TensorProto(dtype=dtype, tensor_shape=TensorShapeProto(dim=[{"size": size} for size in shape]), **values)


def probabilities(*rows: list[float]) -> serving.PredictResponse:
    values = [value for row in rows for value in row]
    return serving.PredictResponse(
        outputs={"probabilities": tensor(DataType.DT_FLOAT, [len(rows), len(rows[0])], float_val=values)}
    )


def grpc_error(code: grpc.StatusCode, details: str, *trailing: tuple[str, str]) -> tuple:
    return code, details, trailing


def grpc_predictor(server: ScriptedGrpcServer, model: str | None = None, tries: int = 3, first_s: float = 0.01):
    return GrpcPredictor(server.address, model, threading.Event(), Backoff(tries=tries, first_s=first_s))


def test_grpc_requests_carry_the_encoded_images_as_tf_servings_string_tensor_under_image_bytes():
    with ScriptedGrpcServer([probabilities([0.1, 0.9], [0.8, 0.2])] * 2) as server:
        grpc_predictor(server).predict([b"\x89PNG one", b"\xff\xd8 two"])
        grpc_predictor(server, model="buildings").predict([b"a", b"b"])
    default, named = server.requests
    assert default.HasField("model_spec") and default.model_spec.name == ""  # the server's default model
    assert named.model_spec.name == "buildings"
    (name, images), *others = default.inputs.items()
    assert name == "image_bytes" and not others
    assert images.dtype == DataType.DT_STRING and [dim.size for dim in images.tensor_shape.dim] == [2]
    assert list(images.string_val) == [b"\x89PNG one", b"\xff\xd8 two"]


def test_grpc_answers_are_the_rest_predictions_one_entry_per_image():
    with ScriptedGrpcServer([probabilities([0.25, 0.75], [0.5, 0.5])]) as server:
        assert grpc_predictor(server).predict([b"a", b"b"]) == [[0.25, 0.75], [0.5, 0.5]]


@pytest.mark.parametrize(
    "outputs, expected",
    [
        ({"mask": tensor(DataType.DT_INT64, [1, 2, 2], int64_val=[0, 1, 1, 0])}, [[[0, 1], [1, 0]]]),
        ({"outputs": tensor(DataType.DT_DOUBLE, [2], double_val=[1.5, -2.0])}, [1.5, -2.0]),
        ({"scores": tensor(DataType.DT_FLOAT, [2, 1], tensor_content=struct.pack("<2f", 0.5, 0.25))}, [[0.5], [0.25]]),
        ({"zeros": tensor(DataType.DT_INT32, [2, 2], int_val=[0])}, [[0, 0], [0, 0]]),  # one value fills the tensor
        ({"label": tensor(DataType.DT_STRING, [2], string_val=[b"cat", b"\xff"])}, ["cat", {"b64": "/w=="}]),
        (
            {
                "classes": tensor(DataType.DT_INT64, [2], int64_val=[3, 1]),
                "scores": tensor(DataType.DT_FLOAT, [2, 2], float_val=[0.5, 0.5, 0.75, 0.25]),
            },
            [{"classes": 3, "scores": [0.5, 0.5]}, {"classes": 1, "scores": [0.75, 0.25]}],
        ),  # fmt: skip
    ],
)
def test_grpc_tensors_read_as_tf_servings_rest_row_form(outputs, expected):
    assert predictions_of(outputs) == expected


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "instance 0 is not an image"),
        (grpc.StatusCode.OUT_OF_RANGE, "index out of range"),
        (grpc.StatusCode.INTERNAL, "the model failed on this input"),  # fastai-serving's 500
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (70000000 vs. 67108864)"),
    ],
)
def test_a_grpc_refusal_of_the_input_is_not_tried_again(code, details):
    with ScriptedGrpcServer([grpc_error(code, details)]) as server:
        with pytest.raises(InputRejected) as refused:
            grpc_predictor(server).predict([b"junk"])
    assert refused.value.reason.startswith(f"the server answered {code.name}: {details}")
    assert len(server.requests) == 1


def test_a_batch_over_the_grpc_servers_message_limit_is_sent_again_one_image_at_a_time():
    answers = [probabilities([0.5, 0.5])] * 2  # for the two single images; gRPC itself refuses the pair
    with ScriptedGrpcServer(answers, max_receive_message_length=1000) as server:
        answered, failed = predict_items(grpc_predictor(server), [("a", b"a" * 600), ("b", b"b" * 600)])
    assert answered == [("a", [0.5, 0.5]), ("b", [0.5, 0.5])] and failed == []
    assert [len(request.inputs["image_bytes"].string_val) for request in server.requests] == [1, 1]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,  # fastai-serving: an archive too old for the gRPC front
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_a_grpc_server_that_cannot_serve_stops_the_run(code):
    with ScriptedGrpcServer([grpc_error(code, "what the server said")]) as server:
        with pytest.raises(ServerFailed, match=f"Predict, model 'digits' answered {code.name}: what the server said"):
            grpc_predictor(server, model="digits").predict([b"image"])
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.UNAVAILABLE, "model 'digits' cannot serve right now"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "model 'digits' did not answer in time"),
        (grpc.StatusCode.ABORTED, "aborted"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight"),  # busy, not a size limit
    ],
)
def test_a_transient_grpc_failure_is_tried_again(code, details):
    with ScriptedGrpcServer([grpc_error(code, details), probabilities([0.1, 0.9])]) as server:
        assert grpc_predictor(server).predict([b"image"]) == [[pytest.approx(0.1), pytest.approx(0.9)]]
    assert len(server.requests) == 2


def test_a_retry_after_in_the_trailing_metadata_is_obeyed():
    answers = [grpc_error(grpc.StatusCode.UNAVAILABLE, "loading", ("retry-after", "0")), probabilities([1.0])]
    with ScriptedGrpcServer(answers) as server:  # a backoff of 600 s would stop the test: the server's 0 s is taken
        assert grpc_predictor(server, first_s=600).predict([b"image"]) == [[1.0]]


def test_a_grpc_refusal_waits_its_retry_pushback_ms_and_never_counts_as_a_try():
    pushback = ("grpc-retry-pushback-ms", "10")
    refusals = [grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "the model is full", pushback)] * 4
    concurrency = Concurrency(1, 8)
    with ScriptedGrpcServer([*refusals, probabilities([1.0])]) as server:
        predictor = GrpcPredictor(
            server.address, None, threading.Event(), Backoff(tries=2, first_s=600), observer=concurrency
        )
        assert predictor.predict([b"image"]) == [[1.0]]
    assert concurrency.refusals == 4


def test_grpc_calls_carry_no_deadline_and_one_out_of_the_clients_time_is_cancelled_and_tried_again():
    with ScriptedGrpcServer([HOLD, probabilities([1.0])]) as server:
        predictor = GrpcPredictor(
            server.address, None, threading.Event(), Backoff(tries=2, first_s=0.01), timeout_s=0.5
        )
        assert predictor.predict([b"image"]) == [[1.0]]
        assert len(server.deadlines) == 2 and min(server.deadlines) > 10**9  # no deadline: the queue target governs
        wait_for(server.cancelled.is_set, "the server to see the first call cancelled")


def test_a_grpc_server_unreachable_after_every_try_stops_the_run():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: connections are refused
        predictor = GrpcPredictor(address, None, threading.Event(), Backoff(tries=3, first_s=0.01))
        with pytest.raises(ServerFailed, match=r"the default model is unavailable: UNAVAILABLE.*\(after 3 tries\)"):
            predictor.predict([b"image"])


def test_tf_serving_without_a_model_name_stops_the_run_asking_for_one():
    answer = grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")  # TF Serving's words
    with ScriptedGrpcServer([answer]) as server:
        with pytest.raises(ServerFailed, match="ModelSpec has no name specified.*give --model"):
            grpc_predictor(server).predict([b"image"])


def test_a_count_of_grpc_predictions_that_does_not_match_stops_the_run():
    with ScriptedGrpcServer([probabilities([0.5, 0.5])]) as server:
        with pytest.raises(ServerFailed, match="1 predictions for 2 images"):
            grpc_predictor(server).predict([b"a", b"b"])


def test_grpc_class_names_come_from_fastai_servings_metadata_and_none_from_other_servers():
    fastai = struct_pb2.Struct()
    fastai.update({"task": "classification", "classes": ["background", "building"]})
    metadata = serving.GetModelMetadataResponse()
    metadata.metadata["fastai"].Pack(fastai)
    with ScriptedGrpcServer([], metadata) as ours, ScriptedGrpcServer([]) as other:
        assert grpc_predictor(ours, model="buildings").class_names() == ["background", "building"]
        assert grpc_predictor(other).class_names() is None
    assert ours.requests[0].model_spec.name == "buildings" and list(ours.requests[0].metadata_field) == ["fastai"]


@pytest.mark.parametrize(
    "server, target",
    [("127.0.0.1:8500", "127.0.0.1:8500"), ("grpc://serving:8500", "serving:8500"), ("[::1]:8500", "[::1]:8500")],
)
def test_the_grpc_server_is_host_and_port_with_or_without_grpc_scheme(server, target):
    assert grpc_target(server) == target


@pytest.mark.parametrize(
    "server, why",
    [("http://127.0.0.1:8501", "for an http\\(s\\) URL use --protocol rest"), ("serving", "with its port")],
)
def test_a_grpc_server_that_is_no_grpc_address_is_refused(server, why):
    with pytest.raises(ValueError, match=why):
        grpc_target(server)


class Refusing:
    """A stand-in predictor that refuses any request holding a `bad` image."""

    endpoint = "stand-in"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images: list[bytes]) -> list:
        self.calls.append(len(images))
        if b"bad" in images:
            raise InputRejected(400, "the server answered 400: not an image")
        return [[len(image)] for image in images]


def test_a_refused_batch_is_sent_again_one_image_at_a_time_so_one_bad_image_fails_alone():
    predictor = Refusing()
    answered, failed = predict_items(predictor, [("a", b"aa"), ("b", b"bad"), ("c", b"c")])
    assert answered == [("a", [2]), ("c", [1])]
    assert failed == [("b", "the server answered 400: not an image")]
    assert predictor.calls == [3, 1, 1, 1]


# --- what a person sees ---------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_terminal_bar_shows_count_rate_eta_and_failures():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(1000, stream, tty=True, clock=clock)
    clock.now += 10
    progress.add(done=240, failed=10)
    line = progress.bar_line(100)
    assert line.startswith("250/1000  25% |")
    assert line.endswith(" 25.0 img/s  ETA 0:30  failed 10")
    assert stream.getvalue().startswith("\r250/1000")


def test_off_a_terminal_progress_is_a_plain_line_every_few_seconds():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, stream, tty=False, every_s=10, clock=clock)
    clock.now += 5
    progress.add(done=20)
    assert stream.getvalue() == ""
    clock.now += 5
    progress.add(done=20)
    clock.now += 1
    progress.add(done=1)
    assert stream.getvalue() == "predict-batch: 40/100 (40%), 4.0 images/s, ETA 0:15, 0 failed\n"


def test_durations_read_as_a_clock():
    assert [duration(7), duration(125), duration(3725)] == ["0:07", "2:05", "1:02:05"]


# --- the command ----------------------------------------------------------------------------------------------------


def test_grpc_with_an_http_url_is_a_usage_error_saying_what_to_give(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path / "images"), "--protocol", "grpc", "--server", "http://127.0.0.1:8501", "--out",
                  str(tmp_path / "out.jsonl")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--protocol grpc takes the gRPC address, host:port or grpc://host:port" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_tiles_need_an_imagery_template(tmp_path, capsys):
    (tmp_path / "tiles.txt").write_text("1-2-3\n")
    with pytest.raises(SystemExit):
        cli.main(["--tiles", str(tmp_path / "tiles.txt"), "--server", "http://127.0.0.1:1", "--out", "x.jsonl"])
    assert "--tiles needs --imagery" in capsys.readouterr().err


def test_the_client_imports_neither_torch_nor_fastai_nor_the_server():
    modules = ["cli", "fetch", "grpc_predictor", "progress", "protocol", "retry", "runner", "sinks", "sources", "tiles"]
    code = (
        "import sys, psycopg\n"
        + "".join(f"import fastai_serving_client.{name}\n" for name in modules)
        + "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "fastai_serving_client" in loaded
    assert not loaded & {"torch", "fastai", "fastai_serving", "fastai_serving_shim", "numpy", "PIL", "harness"}


def test_rest_runs_never_import_grpc_so_the_client_installs_without_it():
    code = (
        "import sys, threading\n"
        "from fastai_serving_client import cli, protocol\n"
        "protocol.make_predictor('rest', 'http://127.0.0.1:8501', None, threading.Event())\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "fastai_serving_client" in loaded and not loaded & {"grpc", "google", "fastai_serving_protos"}


def test_a_run_with_nothing_to_do_draws_no_bar():
    stream = io.StringIO()
    progress = Progress(0, stream, tty=True)
    progress.close()
    assert stream.getvalue() == ""


class ListSink:
    """A stand-in destination that keeps what it is given, or fails on the n-th commit."""

    def __init__(self, fail_on: int = 0) -> None:
        self.results, self.failures, self.commits, self.fail_on = [], [], 0, fail_on

    def commit(self, results):
        self.commits += 1
        if self.commits == self.fail_on:
            raise OSError(28, "No space left on device")
        self.results += results

    def record_failures(self, failures):
        self.failures += failures


def test_the_writer_commits_everything_put_before_it_closes_in_arrival_order():
    sink, stopping = ListSink(), threading.Event()
    outcome = Outcome(total=5, skipped=0)
    writer = Writer(sink, outcome, Progress(5, io.StringIO(), tty=False), stopping)
    writer.put(([("a", [1]), ("b", [2])], []))
    writer.put(([], [("c", "imagery: HTTP 404")]))
    writer.put(([("d", [4]), ("e", [5])], []))
    writer.close()
    assert sink.results == [("a", [1]), ("b", [2]), ("d", [4]), ("e", [5])]
    assert (outcome.done, outcome.failed) == (4, {"c": "imagery: HTTP 404"})
    assert not stopping.is_set()


def test_a_destination_that_fails_stops_the_run_and_counts_only_what_was_committed():
    sink, stopping = ListSink(fail_on=1), threading.Event()
    outcome = Outcome(total=2, skipped=0)
    writer = Writer(sink, outcome, Progress(2, io.StringIO(), tty=False), stopping)
    writer.put(([("a", [1])], []))
    writer.close()
    assert stopping.is_set() and isinstance(writer.error, OSError)
    assert outcome.done == 0 and sink.results == []


# --- the runner against a server that refuses past its capacity -------------------------------------------------


class FullServer:
    """A stand-in server that works on `capacity` requests at once (each `service_s`) and refuses more at once:
    429 with a fractional Retry-After, as fastai-serving's admission control does. Counts what it answered."""

    def __init__(self, capacity: int, service_s: float, retry_after: str = "0.02") -> None:
        self.capacity, self.answered, self.refused, self.most_at_once = capacity, 0, 0, 0
        self._room = threading.BoundedSemaphore(capacity)
        self._lock, self._at_once = threading.Lock(), 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real fronts: no connection per request

            def do_POST(self) -> None:  # noqa: N802
                instances = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
                if not server._room.acquire(blocking=False):
                    with server._lock:
                        server.refused += 1
                    self._answer(429, {"error": "the model is full: retry"}, {"Retry-After": retry_after})
                    return
                with server._lock:
                    server._at_once += 1
                    server.most_at_once = max(server.most_at_once, server._at_once)
                threading.Event().wait(service_s)  # the model's time for this request
                with server._lock:
                    server._at_once -= 1
                    server.answered += 1
                server._room.release()
                self._answer(200, {"predictions": [[len(instance["image_bytes"]["b64"])] for instance in instances]})

            def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**(headers or {}), "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def __enter__(self) -> FullServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.shutdown()
        self.http.server_close()


PROGRESS = re.compile(r"predict-batch: (\d+)/\d+ .*?, concurrency (\d+)")


def test_against_a_server_that_refuses_past_its_capacity_the_run_settles_near_it_and_does_every_key_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(240):
        (images / f"{index:03d}.png").write_bytes(b"x" * (1 + index % 7))
    out = tmp_path / "out.jsonl"
    stopping, stream = threading.Event(), io.StringIO()
    concurrency = Concurrency(1, 64)
    with FullServer(capacity=6, service_s=0.03) as server:
        predictor = RestPredictor(server.url, None, stopping, Backoff(tries=2, first_s=600), observer=concurrency)
        source, sink = FolderSource(images), open_sink(str(out), table="results", threshold=None, tiles=False)
        todo = list(source.keys())
        outcome = Outcome(total=len(todo), skipped=0)
        run = BatchRun(source, sink, predictor, Fetcher(stopping), batch=2, concurrency=concurrency, fetchers=4,
                       stopping=stopping, abort=threading.Event())  # fmt: skip
        run.run(todo, outcome, Progress(len(todo), stream, tty=False, every_s=0.01, concurrency=concurrency))
        sink.close()
    assert server.refused > 0  # it went past the capacity, and was told
    assert (outcome.done, outcome.failed, outcome.error) == (240, {}, "")  # a refusal is no failure, nor 2 tries
    keys = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert sorted(keys) == sorted(todo) and len(keys) == len(set(keys))
    assert server.answered == 120  # every request answered once
    shown = [(int(done), int(limit)) for done, limit in PROGRESS.findall(stream.getvalue())]
    assert {limit for done, limit in shown if done >= len(todo) // 2} <= set(range(4, 10)), shown  # near capacity
    assert concurrency.refusals == server.refused


def test_progress_lines_show_the_concurrency_and_the_refusals_so_far():
    clock, stream = Clock(), io.StringIO()
    concurrency = Concurrency(1, 64)
    progress = Progress(100, stream, tty=False, every_s=10, clock=clock, concurrency=concurrency)
    concurrency.refused(concurrency.sending())
    clock.now += 10
    progress.add(done=40)
    assert stream.getvalue() == (
        "predict-batch: 40/100 (40%), 4.0 images/s, concurrency 1 (1 refused, sent again), ETA 0:15, 0 failed\n"
    )
    assert " 4.0 img/s  concurrency 1 (1 refused, sent again)  ETA 0:15  failed 0" in progress.bar_line(120)


def test_the_summary_says_the_concurrency_the_run_settled_on_and_the_refusals_it_sent_again():
    concurrency = Concurrency(2, 16)
    concurrency.refused(concurrency.sending())
    assert cli.concurrency_summary(concurrency) == (
        "concurrency settled at 2 (adaptive, 2-16); the server refused 1 requests for a moment, each sent again "
        "after its hint"
    )
    assert cli.concurrency_summary(Concurrency(8, 8)) == "concurrency 8 (fixed)"


def test_concurrency_fixed_and_bounded_together_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path / "images"), "--server", "http://127.0.0.1:1", "--out", str(tmp_path / "out.jsonl"),
                  "--concurrency", "8", "--max-concurrency", "16"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--concurrency fixes the requests in flight" in capsys.readouterr().err
