"""The benchmark's tabular and text table: fastai in-process against the served path, one server for both.

  T0 forward        the tabular model alone on already-processed tensors: what is left when fastai's
                    per-call work (copying the frame, its procs, a DataLoader, get_preds) is gone
  T1, X1 get_preds  fastai in-process: one test_dl of all the rows (texts), learn.get_preds
  T2, X2 predict    learn.predict per row (text)
  T3 TorchServe     /predictions/tabular directly, the same load as T4
  T4, X3 shim       the full path: CLIENTS clients, each sending requests of ROWS rows (TEXTS texts)
plus, for tabular, the cost of one `test_dl` + `get_preds` call against the rows it carries, and for each
served row the CPU per row (text) of every server process, measured after the same warm-up as the pipeline's.
Run by `python -m benchmarks.bench --only kinds` (or the whole `make bench`).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from benchmarks.loads import PeakRss, Row, predict_loop_row, run_bodies, timed
from benchmarks.pipeline import CLIENTS, WARM_UP_S, measured, warm_up
from harness.servers import Servers, make_archive
from harness.workload import make_tabular_workload, make_text_workload, make_texts


def json_rows(count: int) -> list[dict]:
    """`count` rows as a client sends them (null for a missing value), from another draw of the training table."""
    import math

    from harness.learners import TABULAR_CATEGORICAL, TABULAR_CONTINUOUS, tabular_frame

    frame = tabular_frame(rows=count, seed=2)[[*TABULAR_CATEGORICAL, *TABULAR_CONTINUOUS]].astype(object)
    return [
        {
            k: None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v
            for k, v in r.items()
        }
        for r in frame.to_dict("records")
    ]


def rows_tabular_in_process(export_path: Path, device: str, rows: list[dict], batch: int) -> tuple[list[Row], str]:
    """T0 (forward alone), T1 (get_preds), T2 (predict loop), and what one test_dl + get_preds call costs."""
    import pandas as pd
    import torch

    from fastai_serving.engine.learner import load_learner
    from fastai_serving.engine.tabular import predict_rows, rows_frame

    served = load_learner(export_path, device)
    learn, frame = served.learn, rows_frame(rows, served.columns)
    with PeakRss([psutil.Process().pid]) as rss:
        seconds = timed(lambda: learn.get_preds(dl=learn.dls.test_dl(frame, bs=batch)))
    get_preds = Row("T1 fastai get_preds", len(rows), seconds, peak_rss_mb=rss.peak_mb,
                    note=f"one test_dl of the {len(rows)} rows' DataFrame, bs {batch}")  # fmt: skip
    tensors = list(learn.dls.test_dl(frame, bs=batch))
    with torch.inference_mode():
        forward = timed(lambda: [learn.model(*b) for b in tensors], best=True)
    ceiling = Row("T0 forward on processed tensors", len(rows), forward, note=f"bs {batch}")
    loop = predict_loop_row("T2 learn.predict loop", learn, rows[:200], pd.Series, "one row at a time")
    one = timed(lambda: predict_rows(served, rows[:1], batch), repeat=9)
    many = timed(lambda: predict_rows(served, rows, batch))
    dl_one = timed(lambda: learn.dls.test_dl(rows_frame(rows[:1], served.columns)), repeat=9)
    per_row_us = (many - one) / (len(rows) - 1) * 1e6
    profile = (
        f"one test_dl + get_preds call: {one * 1000:.1f} ms for 1 row ({dl_one * 1000:.1f} ms of it building the "
        f"test_dl from the DataFrame), {many * 1000:.0f} ms for {len(rows)} rows: {one * 1000:.1f} ms per call "
        f"+ {per_row_us:.0f} us per row; one frame per TorchServe batch pays the call once for all its requests"
    )
    return [ceiling, get_preds, loop], profile


def rows_text_in_process(export_path: Path, device: str, texts: list[str], batch: int) -> list[Row]:
    """X1 (get_preds on one test_dl of the texts) and X2 (learn.predict per text)."""
    from fastai_serving.engine.learner import load_learner

    learn = load_learner(export_path, device).learn
    with PeakRss([psutil.Process().pid]) as rss:
        seconds = timed(lambda: learn.get_preds(dl=learn.dls.test_dl(texts, bs=batch, num_workers=0)))
    get_preds = Row("X1 fastai get_preds", len(texts), seconds, peak_rss_mb=rss.peak_mb,
                    note=f"one test_dl of the {len(texts)} texts, bs {batch}, sorted and padded by fastai")  # fmt: skip
    return [get_preds, predict_loop_row("X2 learn.predict loop", learn, texts[:64], str, "one text at a time")]


def rows_tabular_and_text(tmp: Path, device: str, clients: int, quick: bool, threads: int) -> tuple[list[Row], str]:
    """The tabular and text table's rows: in-process baselines, then both archives served by one server.

    `threads` > 0: torch threads in-process and in the archives' workers alike (0: torch's default
    in-process, the archives' cores ÷ workers).
    """
    import torch

    default_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    rows_per_request, texts_per_request, per_client = 256, 32, 8 if quick else 24
    tabular_export, text_export = make_tabular_workload(tmp / "tabular"), make_text_workload(tmp / "text")
    rows, texts = json_rows(clients * rows_per_request), make_texts(clients * texts_per_request)
    table, profile = rows_tabular_in_process(tabular_export, device, rows, batch=1024)
    table += rows_text_in_process(text_export, device, texts, batch=16)
    torch.set_num_threads(default_threads)
    store = tmp / "store-kinds"
    for name, export in (("tabular", tabular_export), ("text", text_export)):
        made = make_archive(name, export, store, "--torch-threads", str(threads))
        if made.returncode != 0:
            raise SystemExit(f"bench: make-archive {name} failed:\n{made.stderr}")
    servers = Servers(model_store=store, log_dir=tmp / "logs-kinds").start(["tabular", "text"])
    json_header = {"Content-Type": "application/json"}
    try:
        loads = {}
        for code, url, items, size, unit, headers in (
            ("T3 TorchServe direct", f"{servers.inference}/predictions/tabular", rows, rows_per_request, "rows", json_header),
            ("T4 shim -> TorchServe", f"{servers.shim}/v1/models/tabular:predict", rows, rows_per_request, "rows", {}),
            ("X3 shim -> TorchServe", f"{servers.shim}/v1/models/text:predict", texts, texts_per_request, "texts", {}),
        ):  # fmt: skip
            bodies = [json.dumps({"instances": items[i * size : (i + 1) * size]}).encode() for i in range(clients)]
            loads[code] = (lambda url=url, bodies=bodies, headers=headers: run_bodies(url, bodies, per_client, headers),
                           f"{clients} clients x {size} {unit} per request", unit[:-1])  # fmt: skip
        warm_up([load for load, _, _ in loads.values()], WARM_UP_S[quick])
        for code, (load, note, unit) in loads.items():
            with PeakRss([servers.process.pid]) as rss:
                row, cpu_us = measured(servers, load)
            row.name, row.peak_rss_mb, row.note = code, rss.peak_mb, f"{note}; {cpu_per(cpu_us, unit)}"
            table.append(row)
    finally:
        servers.stop()
    return table, profile


def cpu_per(cpu_us: dict[str, float], unit: str) -> str:
    """Each process kind's CPU µs per row (text) that used any, and all the servers' together."""
    serving = {kind: us for kind, us in cpu_us.items() if kind != CLIENTS and us >= 0.05}
    parts = ", ".join(f"{kind} {us:.1f}" for kind, us in serving.items())
    return f"CPU µs per {unit}: {parts}; serving in all {sum(serving.values()):.1f}; the clients {cpu_us[CLIENTS]:.1f}"


def print_kinds_table(rows: list[Row], profile: str) -> None:
    """The tabular and text rows, each divided by fastai's get_preds on the same rows (T1, X1)."""
    header = (
        f"| {'row':<34} | {'per s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'peak RSS MB':>11} | {'÷ get_preds':>11} |"
    )
    print("\ntabular (rows/s) and text (texts/s)\n")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        baseline = next(r for r in rows if r.name.startswith(row.name[0] + "1")).images_per_s
        print(
            f"| {row.name:<34} | {row.images_per_s:8.0f} | {row.percentile(0.5):8.0f} | {row.percentile(0.99):8.0f} "
            f"| {row.peak_rss_mb:11.0f} | {row.images_per_s / baseline:11.2f} |"
        )
    for row in rows:
        if row.note:
            print(f"  {row.name.split()[0]}: {row.note}")
    print(f"  T: {profile}")
