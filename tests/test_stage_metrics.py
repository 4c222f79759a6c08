"""The handler's metrics' own parts: many observations written at once, and the live gauges of ended processes."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram

from fastai_serving.stage_metrics import observe_each
from fastai_serving_shim.metrics import WholeFiles, forget_dead_processes


def histogram_samples(observe) -> dict:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", buckets=(0.001, 0.01, 0.1), registry=registry)
    observe(histogram)
    return {
        (s.name, tuple(s.labels.items())): s.value
        for s in next(iter(registry.collect())).samples
        if "created" not in s.name
    }


def test_observing_a_value_count_times_at_once_equals_observing_it_one_by_one():
    for value, count in ((0.005, 7), (0.5, 3), (0.0, 1), (float("nan"), 2)):
        at_once = histogram_samples(lambda h, v=value, n=count: observe_each(h, v, n))
        one_by_one = histogram_samples(lambda h, v=value, n=count: [h.observe(v) for _ in range(n)])
        assert str(at_once) == str(one_by_one)  # str: NaN sums compare equal as text


def test_the_live_gauges_of_an_ended_process_are_forgotten_and_a_living_ones_kept(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(ended.stdout), os.getpid()
    for pid in (dead_pid, live_pid):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"histogram_{pid}.db").write_bytes(b"")
    forget_dead_processes(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{live_pid}.db", f"histogram_{dead_pid}.db", f"histogram_{live_pid}.db"]
    )  # a dead process's counts stay: counters and histograms only grow


def test_a_scrape_while_a_process_creates_its_file_sums_the_others_and_leaves_that_one_to_the_next(tmp_path):
    """A process creates its file empty, then sizes it: a scrape in between answered 500 (struct.error)."""
    counted = "from prometheus_client import Counter; Counter('answers', 'a', registry=None).inc(3)"
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", counted], env=environment, check=True, timeout=60)
    (tmp_path / "counter_999999.db").write_bytes(b"")  # another process's, being created
    registry = CollectorRegistry()
    WholeFiles(registry, str(tmp_path))
    assert registry.get_sample_value("answers_total") == 3


def test_gunicorns_master_outlives_a_workers_gauges_that_a_scrape_removed_first(tmp_path, monkeypatch):
    """A worker's end and a scrape that saw its pid gone both remove its live gauges: the master's removal finding
    them gone must not raise (gunicorn's master ends on an error in its child_exit hook)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    from prometheus_client import multiprocess

    from fastai_serving_shim.rest import gunicorn_conf

    asked = []

    def removed_by_a_scrape_first(pid, path=None):
        asked.append(pid)
        raise FileNotFoundError(f"gauge_livesum_{pid}.db")

    monkeypatch.setattr(multiprocess, "mark_process_dead", removed_by_a_scrape_first)
    gunicorn_conf.child_exit(None, SimpleNamespace(pid=4242))
    assert asked == [4242]
