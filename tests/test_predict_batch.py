"""scripts/predict-batch end to end: the real client against the real shim and TorchServe (the demo model),
a loopback imagery server serving real PNG and JPEG tiles (some failing, some slow), and a real
PostgreSQL started for these tests. Runs are killed part-way (SIGKILL, Ctrl-C) and resumed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import signal
import subprocess
import venv
from pathlib import Path

import psycopg
import pytest
import requests
from PIL import Image

from fastai_serving_client.sources import Shard, select
from fastai_serving_client.tiles import parse_tile, tile_polygon
from harness import PROJECT_ROOT
from harness.postgres import PostgresCluster
from harness.tile_server import TileServer
from harness.waiting import wait_for

pytestmark = pytest.mark.e2e

PREDICT_BATCH = str(PROJECT_ROOT / "scripts" / "predict-batch")
TOLERANCE = 1e-5  # the same image in another batch may differ in the last float bits (measured: up to 2e-6)


@pytest.fixture(scope="module")
def postgres():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def digit_files(demo_model) -> list[Path]:
    """The demo's real digit PNGs, digits mixed, in a stable order."""
    return sorted((demo_model / "images").rglob("*.png"), key=lambda path: int(path.stem))


def as_jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def tile_images(digit_files: list[Path], count: int, x0: int = 600) -> dict[str, bytes]:
    """`count` zoom-12 tiles in a row, alternately PNG and JPEG, each a real digit image."""
    tiles = {}
    for index, path in enumerate(digit_files[:count]):
        png = path.read_bytes()
        tiles[f"{x0 + index}-1400-12"] = png if index % 2 == 0 else as_jpeg(png)
    return tiles


def write_tiles(folder: Path, keys: list[str]) -> Path:
    path = folder / "tiles.txt"
    path.write_text("".join(f"{key}\n" for key in keys))
    return path


def server_answers(torchserve, images: dict[str, bytes]) -> dict[str, list[float]]:
    """What the server answers for each image, asked directly, 8 per request."""
    keys, answers = list(images), {}
    for start in range(0, len(keys), 8):
        chunk = keys[start : start + 8]
        body = {"instances": [{"image_bytes": {"b64": base64.b64encode(images[key]).decode()}} for key in chunk]}
        response = requests.post(f"{torchserve.shim}/v1/models/digits:predict", json=body, timeout=60)
        response.raise_for_status()
        answers.update(zip(chunk, response.json()["predictions"], strict=True))
    return answers


def assert_same_answers(got: dict[str, list[float]], expected: dict[str, list[float]]) -> None:
    assert set(got) == set(expected)
    for key, probabilities in expected.items():
        assert got[key] == pytest.approx(probabilities, abs=TOLERANCE), key


def predict_batch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PREDICT_BATCH, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def start_predict_batch(log: Path, *args: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([PREDICT_BATCH, *map(str, args)], stdout=out, stderr=subprocess.STDOUT)


def table_rows(url: str, table: str) -> dict[str, list[float]]:
    with psycopg.connect(url) as connection:
        try:
            return dict(connection.execute(f"SELECT tile, output FROM {table}").fetchall())
        except psycopg.errors.UndefinedTable:
            return {}


def jsonl_rows(path: Path) -> list[tuple[str, list[float]]]:
    """The file's whole lines (while a run writes it, the last may be half written)."""
    if not path.exists():
        return []
    whole = path.read_text().split("\n")[:-1]
    return [(record["key"], record["prediction"]) for record in map(json.loads, whole)]


def test_chip_n_scale_tiles_go_into_its_postgres_table_each_exactly_once_after_a_sigkill_and_a_rerun(
    torchserve, postgres, digit_files, tmp_path
):
    tiles = tile_images(digit_files, 96)
    tiles_txt = write_tiles(tmp_path, list(tiles))
    with TileServer(tiles, hold_after=16) as imagery:  # the rest wait for the kill: it lands part-way
        args = ["--tiles", tiles_txt, "--imagery", imagery.template, "--server", torchserve.shim]
        args += ["--out", postgres.url, "--table", "killed", "--fetchers", "2"]
        first = start_predict_batch(tmp_path / "first.log", *args)
        wait_for(lambda: len(table_rows(postgres.url, "killed")) >= 8, "8 committed tiles", timeout_s=60, every_s=0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        committed = set(table_rows(postgres.url, "killed"))
        assert 8 <= len(committed) <= 16
        imagery.requests.clear()
        imagery.release()
        rerun = predict_batch(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"done {len(tiles) - len(committed)}, skipped {len(committed)} (done before), failed 0," in rerun.stderr
    rows = table_rows(postgres.url, "killed")
    assert sorted(rows) == sorted(tiles)  # every tile; the primary key makes each one exactly once
    assert not committed & set(imagery.requests)  # the rerun fetched only what was missing
    assert_same_answers(rows, server_answers(torchserve, tiles))
    with psycopg.connect(postgres.url) as connection:
        assert connection.execute("SELECT count(*) FROM killed_failed").fetchone() == (0,)


def image_folder(digit_files: list[Path], folder: Path, count: int) -> dict[str, bytes]:
    """`count` digit images under folder/<digit>/, some as JPEG; returns key (relative path) -> bytes."""
    images = {}
    for index, path in enumerate(digit_files[:count]):
        data = path.read_bytes()
        key = f"{path.parent.name}/{path.stem}.png" if index % 3 else f"{path.parent.name}/{path.stem}.jpg"
        data = data if key.endswith(".png") else as_jpeg(data)
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
        images[key] = data
    return images


def test_a_folder_goes_into_jsonl_each_image_exactly_once_after_a_sigkill_and_a_rerun(
    torchserve, digit_files, tmp_path
):
    images = image_folder(digit_files, tmp_path / "images", 64)
    out = tmp_path / "results.jsonl"
    args = [tmp_path / "images", "--server", torchserve.shim, "--out", out, "--concurrency", "1", "--batch", "4"]
    first = start_predict_batch(tmp_path / "first.log", *args)
    wait_for(lambda: len(jsonl_rows(out)) >= 8, "8 committed lines", timeout_s=60, every_s=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert len(jsonl_rows(out)) < len(images)
    rerun = predict_batch(*args)
    assert rerun.returncode == 0, rerun.stderr
    rows = jsonl_rows(out)
    assert sorted(key for key, _ in rows) == sorted(images)  # each key once
    assert_same_answers(dict(rows), server_answers(torchserve, images))


def test_ctrl_c_stops_cleanly_with_what_was_answered_committed_and_a_rerun_finishes(torchserve, digit_files, tmp_path):
    images = image_folder(digit_files, tmp_path / "images", 48)
    out = tmp_path / "results.jsonl"
    args = [tmp_path / "images", "--server", torchserve.shim, "--out", out, "--concurrency", "1", "--batch", "4"]
    first = start_predict_batch(tmp_path / "first.log", *args)
    wait_for(lambda: len(jsonl_rows(out)) >= 8, "8 committed lines", timeout_s=60, every_s=0.02)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    log = (tmp_path / "first.log").read_text()
    assert "stopping: committing the requests in flight" in log
    assert "predict-batch: interrupted in" in log and "run the same command again to resume" in log
    done = len(jsonl_rows(out))  # every line whole: the file parses
    assert f"{len(images)} images, done {done}, skipped 0 (done before), failed 0, left {len(images) - done}" in log
    rerun = predict_batch(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(key for key, _ in jsonl_rows(out)) == sorted(images)


def test_a_flaky_imagery_server_loses_no_tile_and_tiles_that_fail_for_good_are_recorded_with_their_reason(
    torchserve, digit_files, tmp_path
):
    tiles = tile_images(digit_files, 40)
    keys = list(tiles)
    tiles[keys[5]] = b"these bytes are not an image"
    missing = keys[9]
    del tiles[missing]
    flaky = {keys[1]: 2, keys[2]: 1, keys[3]: 99}  # 500s, then answers; keys[3] never answers
    slow = {keys[4]: 0.8, keys[6]: 0.8}
    out = tmp_path / "results.csv"
    with TileServer(tiles, flaky=flaky, slow=slow) as imagery:
        result = predict_batch(
            "--tiles", write_tiles(tmp_path, keys), "--imagery", imagery.template, "--server", torchserve.shim,
            "--model", "digits", "--out", out, "--tries", "4", "--backoff", "0.05", "--progress-every", "0.2",
        )  # fmt: skip
    assert result.returncode == 3, result.stderr  # finished, some inputs failed for good
    assert (imagery.requests[keys[1]], imagery.requests[keys[2]], imagery.requests[keys[3]]) == (3, 2, 4)
    assert imagery.requests[missing] == 1  # a 404 is not tried again
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["tile", "output"]
    written = [row[0] for row in rows[1:]]
    assert sorted(written) == sorted(set(keys) - {keys[3], keys[5], missing})  # each once, slow ones included
    failures = {
        r["key"]: r["reason"] for r in map(json.loads, (tmp_path / "results.csv.failed.jsonl").read_text().splitlines())
    }
    assert set(failures) == {keys[3], keys[5], missing}
    assert failures[missing].startswith("imagery: HTTP 404")
    assert "HTTP 500" in failures[keys[3]] and "(after 4 tries)" in failures[keys[3]]
    assert failures[keys[5]].startswith("the server answered 400:") and "instance 0" in failures[keys[5]]
    assert "failed 3" in result.stderr
    for key in failures:
        assert f"  {key}  " in result.stderr  # listed at the end
    assert re.search(
        r"predict-batch: \d+/40 \(\d+%\), [\d.]+ images/s, concurrency \d+[^,]*, ETA \S+, \d+ failed\n", result.stderr
    )


def test_geojson_has_a_polygon_per_tile_kept_by_convert_geojsons_threshold(torchserve, digit_files, tmp_path):
    threes = [path for path in digit_files if path.parent.name == "3"][:8]
    others = [path for path in digit_files if path.parent.name != "3"][:16]
    tiles = {f"{700 + index}-1400-12": path.read_bytes() for index, path in enumerate(threes + others)}
    out = tmp_path / "buildings.geojson"
    with TileServer(tiles) as imagery:
        args = ["--tiles", write_tiles(tmp_path, list(tiles)), "--imagery", imagery.template]
        args += ["--server", torchserve.shim, "--out", out]
        kept = predict_batch(*args, "--threshold", "3", "0.5")
        assert kept.returncode == 0, kept.stderr
        predictions = dict(jsonl_rows(tmp_path / "buildings.geojson.jsonl"))
        features = json.loads(out.read_text())["features"]
        everything = predict_batch(*args)
    expected = sorted(key for key, p in predictions.items() if round(p[3], 2) >= 0.5)
    assert len(expected) >= 6  # the digit 3s, as the demo model reads them
    assert sorted(feature["id"] for feature in features) == expected
    for feature in features:
        assert feature["geometry"] == tile_polygon(parse_tile(feature["id"]))
        assert feature["properties"]["p3"] == round(predictions[feature["id"]][3], 2)
    assert f"wrote {out}: {len(expected)} of {len(tiles)} tiles (class 3 >= 0.5)" in kept.stderr
    assert "0 to do" in everything.stderr  # another threshold predicts nothing again
    assert len(json.loads(out.read_text())["features"]) == len(tiles)


def test_shards_split_a_list_of_paths_and_urls_across_processes_with_every_key_once(
    torchserve, postgres, digit_files, tmp_path
):
    files = image_folder(digit_files, tmp_path / "images", 30)
    tiles = tile_images(digit_files[30:], 15)
    with TileServer(tiles) as imagery:
        urls = [imagery.template.format(z=12, x=parse_tile(key).x, y=1400) for key in tiles]
        lines = [f"images/{key}" for key in files] + urls
        lines = lines[::2] + lines[1::2]  # paths and URLs mixed
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        common = [tmp_path / "list.txt", "--server", torchserve.shim]
        to_files = [  # each shard its own file
            start_predict_batch(
                tmp_path / f"file-{k}.log", *common, "--out", tmp_path / f"shard-{k}.jsonl", "--shard", f"{k}/3"
            )
            for k in range(3)
        ]
        to_table = [  # all shards one table, at the same time
            start_predict_batch(
                tmp_path / f"table-{k}.log", *common, "--out", postgres.url, "--table", "shards", "--shard", f"{k}/3"
            )
            for k in range(3)
        ]
        assert [process.wait(timeout=120) for process in to_files + to_table] == [0] * 6
    taken = [[key for key, _ in jsonl_rows(tmp_path / f"shard-{k}.jsonl")] for k in range(3)]
    for k in range(3):
        assert sorted(taken[k]) == sorted(lines[k::3])  # every third key, from the K-th
        assert sorted(taken[k]) == sorted(select(lines, Shard(k, 3)))
        assert f"{len(lines[k::3])} to do" in (tmp_path / f"table-{k}.log").read_text()
    assert sorted(key for shard in taken for key in shard) == sorted(lines)
    assert sorted(table_rows(postgres.url, "shards")) == sorted(lines)


def test_a_folder_through_grpc_gives_the_same_jsonl_answers_as_through_rest(torchserve, digit_files, tmp_path):
    images = image_folder(digit_files, tmp_path / "images", 24)
    common = [tmp_path / "images", "--concurrency", "1", "--batch", "8"]  # the same batches both ways
    over_rest = predict_batch(*common, "--server", torchserve.shim, "--out", tmp_path / "rest.jsonl")
    over_grpc = predict_batch(
        *common, "--protocol", "grpc", "--server", torchserve.grpc, "--out", tmp_path / "grpc.jsonl"
    )
    assert over_rest.returncode == 0, over_rest.stderr
    assert over_grpc.returncode == 0, over_grpc.stderr
    assert f"grpc://{torchserve.grpc} PredictionService/Predict, the default model (GRPC, batch 8" in over_grpc.stderr
    by_rest, by_grpc = dict(jsonl_rows(tmp_path / "rest.jsonl")), dict(jsonl_rows(tmp_path / "grpc.jsonl"))
    assert sorted(by_grpc) == sorted(images)
    for key, probabilities in by_rest.items():
        assert by_grpc[key] == pytest.approx(probabilities, abs=1e-6), key


def test_a_bad_image_through_grpc_is_recorded_with_its_reason_and_the_others_are_answered(
    torchserve, digit_files, tmp_path
):
    images = image_folder(digit_files, tmp_path / "images", 15)
    (tmp_path / "images" / "broken.png").write_bytes(b"these bytes are not an image")
    out = tmp_path / "results.jsonl"
    result = predict_batch(
        tmp_path / "images", "--protocol", "grpc", "--server", f"grpc://{torchserve.grpc}", "--model", "digits",
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # finished, one input failed for good
    assert_same_answers(dict(jsonl_rows(out)), server_answers(torchserve, images))
    (failure,) = map(json.loads, (tmp_path / "results.jsonl.failed.jsonl").read_text().splitlines())
    assert failure["key"] == "broken.png"
    assert failure["reason"].startswith("the server answered INVALID_ARGUMENT:") and "instance 0" in failure["reason"]
    assert "failed 1" in result.stderr and "  broken.png  the server answered INVALID_ARGUMENT" in result.stderr


def test_an_unreachable_grpc_server_is_tried_again_then_the_run_stops_saying_why(
    digit_files, tmp_path, nothing_listens
):
    image_folder(digit_files, tmp_path / "images", 4)
    address = f"127.0.0.1:{nothing_listens}"
    out = tmp_path / "results.jsonl"
    result = predict_batch(
        tmp_path / "images", "--protocol", "grpc", "--server", address, "--out", out, "--tries", "3",
        "--backoff", "0.05",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    stopped = f"predict-batch: stopped: grpc://{address} PredictionService/Predict, the default model is unavailable: "
    assert stopped in result.stderr and "UNAVAILABLE" in result.stderr and "(after 3 tries)" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert jsonl_rows(out) == []


def test_the_client_installs_alone_without_torch_fastai_or_the_server_and_speaks_grpc_with_its_extra(
    torchserve, digit_files, tmp_path
):
    venv.create(tmp_path / "venv", with_pip=True)
    python, command = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin" / "predict-batch"

    def install(what: str) -> set[str]:
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", what]
        done = subprocess.run(pip, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
        return {line.split("==")[0].lower() for line in installed.stdout.split()}

    names = install(str(PROJECT_ROOT / "client"))
    assert "fastai-serving-client" in names and "psycopg" in names
    assert not names & {"torch", "fastai", "fastai-serving", "numpy", "pillow", "flask", "grpcio", "protobuf"}
    usage = subprocess.run([command, "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--shard K/N" in usage.stdout
    image_folder(digit_files, tmp_path / "images", 4)
    args = [tmp_path / "images", "--protocol", "grpc", "--server", torchserve.grpc, "--out", tmp_path / "out.jsonl"]
    without_grpcio = subprocess.run([command, *args], capture_output=True, text=True, timeout=60)
    assert without_grpcio.returncode == 2
    assert "--protocol grpc needs grpcio and protobuf" in without_grpcio.stderr
    assert "pip install './client[grpc]'" in without_grpcio.stderr

    names = install(f"{PROJECT_ROOT / 'client'}[grpc]")
    assert {"grpcio", "protobuf"} <= names and not names & {"torch", "fastai", "fastai-serving", "numpy"}
    over_grpc = subprocess.run([command, *args], capture_output=True, text=True, timeout=120)
    assert over_grpc.returncode == 0, over_grpc.stderr
    assert len(jsonl_rows(tmp_path / "out.jsonl")) == 4
