"""A failed end-to-end test's report ends with what the servers logged while it ran: only that, and short."""

from __future__ import annotations

from harness import failure_logs


def write(log_dir, name: str, *lines: str) -> None:
    with (log_dir / name).open("a") as log:
        log.writelines(f"{line}\n" for line in lines)


def answer(hhmmss: str, path: str, status: int, ms: int) -> str:
    return f'2026-12-01T{hhmmss},000 - /127.0.0.1:40000 "POST {path} HTTP/1.1" {status} {ms}'


def test_only_what_the_logs_got_while_the_test_ran_is_shown(tmp_path):
    write(tmp_path, "serve.out", "serve: digits ready at ...")
    write(tmp_path, "ts_log.log", "2026-12-01T10:00:00,000 [ERROR] an error before the test")
    before = failure_logs.sizes(tmp_path)
    write(tmp_path, "serve.out", "2026/12/01 10:00:05 [error] 12#12: *7 upstream prematurely closed connection")
    digest = failure_logs.digest(tmp_path, before)
    assert "upstream prematurely closed connection" in digest
    assert "ready at" not in digest and "an error before the test" not in digest


def test_torchserves_log_shows_its_warnings_and_errors_the_handlers_its_tracebacks(tmp_path):
    before = failure_logs.sizes(tmp_path)  # no log written yet
    write(
        tmp_path,
        "ts_log.log",
        "2026-12-01T10:00:01,000 [INFO ] W-9000-digits_1.0 Sending response for jobId 1",
        "2026-12-01T10:00:02,000 [WARN ] W-9000-digits_1.0 Drop response for inference request 2",
    )
    write(tmp_path, "model_log.log", "[INFO ] fastai-serving batch: requests=1", "Traceback (most recent call last):")
    digest = failure_logs.digest(tmp_path, before)
    assert "Drop response" in digest and "Traceback" in digest
    assert "Sending response" not in digest and "fastai-serving batch" not in digest


def test_torchserves_answers_are_counted_with_the_slow_and_failed_ones_and_its_last_predictions(tmp_path):
    before = failure_logs.sizes(tmp_path)
    write(
        tmp_path,
        "access_log.log",
        answer("10:00:01", "/predictions/text", 200, 12),
        answer("10:00:02", "/predictions/text", 503, 3),
        answer("10:00:03", "/predictions/digits", 200, 9000),
        '2026-12-01T10:00:04,000 - /127.0.0.1:40001 "GET /models HTTP/1.1" 200 1',
    )
    digest = failure_logs.digest(tmp_path, before)
    assert "4 answers by TorchServe" in digest
    notable, last = digest.split("its last predictions:")
    assert " 503 3" in notable and " 200 9000" in notable and " 200 12" not in notable
    assert last.count("/predictions/") == 3 and "GET /models" not in last


def test_a_long_log_shows_its_latest_lines_saying_how_many_were_left_out(tmp_path):
    before = failure_logs.sizes(tmp_path)
    write(tmp_path, "serve.out", *(f"line {number}" for number in range(20)))
    digest = failure_logs.digest(tmp_path, before)
    assert f"({20 - failure_logs.LINES_PER_LOG} earlier lines left out)" in digest
    assert "line 19" in digest and "line 11" not in digest
