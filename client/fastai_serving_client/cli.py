"""predict-batch: run images through any TF-Serving endpoint and keep every answer, resumably.

Exit status: 0 every key done; 3 finished, some inputs failed for good (listed, and recorded);
1 stopped by an error (the server unavailable after every retry, the destination failing; rerun to
resume); 2 a usage error; 130 (Ctrl-C) or 143 (SIGTERM) stopped on request after committing what was in hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from . import credentials, defaults
from .concurrency import Concurrency
from .fetch import Fetcher
from .geo_cli import add_geo_arguments, check_geo_flags, geo_sink, geo_source, is_geo_run
from .predictor import Predictor
from .progress import Progress, duration
from .protocol import PROTOCOLS, make_predictor
from .retry import Backoff
from .runner import BatchRun, Outcome
from .sinks import SinkError, open_sink
from .sources import FolderSource, ListSource, Source, TileSource, parse_shard, select, shard_count, shard_keys

EXIT_DONE, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_INPUTS = 0, 1, 2, 3
EXAMPLES = """examples:
  predict-batch tiles/ --server http://127.0.0.1:8501 --out results.jsonl
  predict-batch tiles/ --protocol grpc --server 127.0.0.1:8500 --out results-grpc.jsonl
  predict-batch tiles/ --server https://models.example:8501 --token-file api-key.txt --ca ca.pem --out results.jsonl
  predict-batch --tiles tiles.txt --imagery 'https://imagery.example/{z}/{x}/{y}.png' \\
      --server http://127.0.0.1:8501 --out postgresql://user@db/chips
  predict-batch --tiles tiles.txt --imagery URL --server URL --out buildings.geojson --threshold 1 0.5
  predict-batch urls.txt --server URL --model buildings --out results.csv --shard 0/4
  predict-batch --area region.geojson --zoom 17 --imagery URL --server URL --out buildings.gpkg
  predict-batch --raster scene.tif --window 256 --overlap 32 --server URL --model roofs --out roofs.tif \\
      --polygons roofs.gpkg --simplify 0.5 --min-area 4
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict-batch",
        description="Run a folder of images, a list of paths or URLs, or chip-n-scale's tile list through any "
        "TF-Serving endpoint; results are committed as they arrive, and a rerun resumes where a run stopped.",
        epilog=EXAMPLES + "\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("what to predict (an INPUT, --tiles, or --area or --raster below)")
    source.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="a folder of images (recursive; key = the path relative to it) or a text file of image paths "
        "or http(s) URLs, one a line (key = the line)",
    )
    source.add_argument(
        "--tiles", type=Path, metavar="FILE", help="chip-n-scale's tile list: x-y-z lines (key = x-y-z)"
    )
    source.add_argument(
        "--imagery", metavar="URL", help="with --tiles or --area: an XYZ imagery URL template with {z}, {x} and {y}"
    )
    server = parser.add_argument_group("the server")
    server.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the TF-Serving endpoint: REST, its base URL (http://host:8501); gRPC, host:port or grpc://host:port",
    )
    server.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="the model: /v1/models/NAME:predict, or gRPC's model_spec.name (default: /analyze:predict, or a "
        "model_spec naming no model: the server's default model)",
    )
    server.add_argument(
        "--protocol",
        default=defaults.PROTOCOL,
        choices=PROTOCOLS,
        help="rest: TF Serving's REST API (port 8501); grpc: its gRPC PredictionService/Predict (port 8500), "
        "the images sent raw (needs grpcio: pip install './client[grpc]') (default: %(default)s)",
    )
    credentials.add_arguments(parser.add_argument_group("credentials and TLS (docs/security.md)"))
    out = parser.add_argument_group("where results go")
    out.add_argument(
        "--out", required=True, metavar="DEST", help="a .jsonl, .csv or .geojson file, or a postgresql:// URL"
    )
    out.add_argument(
        "--table",
        default=defaults.TABLE,
        metavar="NAME",
        help="PostgreSQL: the results table (chip-n-scale's) (default: %(default)s)",
    )
    out.add_argument(
        "--threshold",
        nargs=2,
        metavar=("CLASS", "VALUE"),
        help="GeoJSON: keep tiles whose CLASS probability (an index, or a name the server's metadata lists), "
        "rounded to 2 decimals, is at least VALUE (chip-n-scale's convert-geojson)",
    )
    speed = parser.add_argument_group("throughput and retries")
    speed.add_argument(
        "--batch",
        metavar="N",
        type=positive_int,
        default=defaults.BATCH,
        help="images per request (default: %(default)s)",
    )
    speed.add_argument(
        "--concurrency",
        metavar="N",
        type=positive_int,
        default=None,
        help="requests in flight, fixed (default: adapted to what the server answers, between the next two)",
    )
    speed.add_argument(
        "--min-concurrency",
        metavar="N",
        type=positive_int,
        default=defaults.MIN_CONCURRENCY,
        help="the fewest requests in flight the adaptive concurrency goes down to (it starts there) (default: %(default)s)",
    )
    speed.add_argument(
        "--max-concurrency",
        metavar="N",
        type=positive_int,
        default=defaults.MAX_CONCURRENCY,
        help="the most requests in flight the adaptive concurrency goes up to (default: %(default)s)",
    )
    speed.add_argument(
        "--fetchers",
        metavar="N",
        type=positive_int,
        default=defaults.FETCHERS,
        help="images read or downloaded at once (default: %(default)s)",
    )
    speed.add_argument(
        "--shard",
        metavar="K/N",
        default=defaults.SHARD,
        help="K/N: take every N-th key from the K-th (from 0) (default: %(default)s)",
    )
    speed.add_argument(
        "--tries",
        metavar="N",
        type=positive_int,
        default=defaults.RETRIES,
        help="tries per request (503, 504, dropped connections, imagery 5xx) (default: %(default)s)",
    )
    speed.add_argument(
        "--backoff",
        metavar="S",
        type=non_negative_float,
        default=defaults.BACKOFF_S,
        help=f"seconds before the first retry; doubles each time, up to {defaults.BACKOFF_MAX_S:g} "
        "(default: %(default)s)",
    )
    speed.add_argument(
        "--timeout",
        metavar="S",
        type=non_negative_float,
        default=defaults.TIMEOUT_S,
        help="seconds one prediction request may take (default: %(default)s)",
    )
    speed.add_argument(
        "--fetch-timeout",
        metavar="S",
        type=non_negative_float,
        default=defaults.FETCH_TIMEOUT_S,
        help="seconds one image download may take (default: %(default)s)",
    )
    speed.add_argument(
        "--progress-every",
        metavar="S",
        type=non_negative_float,
        default=defaults.PROGRESS_EVERY_S,
        help="seconds between progress lines when not on a terminal (default: %(default)s)",
    )
    add_geo_arguments(parser)
    return parser


def source_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Source:
    if args.tiles is not None:
        if args.input is not None:
            parser.error("give an INPUT or --tiles, not both")
        if not args.imagery:
            parser.error("--tiles needs --imagery, the XYZ template its tiles are downloaded from")
        if not args.tiles.is_file():
            parser.error(f"--tiles {args.tiles}: no such file")
        try:
            return TileSource(args.tiles, args.imagery)
        except ValueError as error:
            parser.error(str(error))
    if args.imagery:
        parser.error("--imagery goes with --tiles or --area")
    if args.input is None:
        parser.error("say what to predict: a folder, a list file, --tiles with --imagery, --area or --raster")
    path = Path(args.input)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return ListSource(path)
    parser.error(f"{args.input}: no such folder or file")
    raise AssertionError("unreachable")


def threshold_from(
    args: argparse.Namespace, parser: argparse.ArgumentParser, predictor: Predictor
) -> tuple[int, float] | None:
    if args.threshold is None:
        return None
    name, text = args.threshold
    try:
        value = float(text)
    except ValueError:
        parser.error(f"--threshold VALUE must be a number, not {text!r}")
    if not 0 <= value <= 1:
        parser.error(f"--threshold VALUE must be between 0 and 1, not {value}")
    if name.isdigit():
        return int(name), value
    classes = predictor.class_names()
    if classes is None:
        parser.error(f"--threshold {name}: this server's metadata lists no class names; give the class's index")
    if name not in classes:
        parser.error(f"--threshold {name}: the model's classes are {', '.join(classes)}")
    return classes.index(name), value


def print_summary(
    outcome: Outcome, where_failures: str, noun: str, stream, concurrency: Concurrency | None = None
) -> None:
    how = "finished" if outcome.finished else ("interrupted" if outcome.interrupted else "stopped by an error")
    left = outcome.total - outcome.skipped - outcome.done - len(outcome.failed)
    left -= outcome.nodata
    print(
        f"predict-batch: {how} in {duration(outcome.elapsed_s)}: {outcome.total} {noun}, done {outcome.done}, "
        f"skipped {outcome.skipped} (done before), failed {len(outcome.failed)}"
        + (f", nodata {outcome.nodata} (not sent)" if outcome.nodata else "")
        + (f", left {left}" if left > 0 else "")
        + f", {outcome.images_per_s:.1f} images/s",
        file=stream,
    )
    if concurrency is not None:
        print(f"predict-batch: {concurrency_summary(concurrency)}", file=stream)
    if outcome.failed:
        print(f"failed ({len(outcome.failed)}, recorded in {where_failures}; a rerun tries them again):", file=stream)
        width = min(40, max(len(key) for key in outcome.failed))
        for key, reason in list(outcome.failed.items())[: defaults.FAILURES_LISTED]:
            print(f"  {key:<{width}}  {reason}", file=stream)
        if len(outcome.failed) > defaults.FAILURES_LISTED:
            print(f"  ... and {len(outcome.failed) - defaults.FAILURES_LISTED} more in {where_failures}", file=stream)
    if outcome.error:
        print(f"predict-batch: stopped: {outcome.error}", file=stream)
    if not outcome.finished:
        print("predict-batch: run the same command again to resume", file=stream)


def reader_of(source: Source):
    """A scene's window reader, which takes the place of the fetcher; None for every other source."""
    from .geo_cli import scene_reader

    return scene_reader(source)


def concurrency_summary(concurrency: Concurrency) -> str:
    """The requests in flight the run settled on, and the server's refusals (each sent again, none failed)."""
    text = (
        f"concurrency {concurrency.limit} (fixed)"
        if concurrency.fixed
        else f"concurrency settled at {concurrency.settled} (adaptive, {concurrency.minimum}-{concurrency.maximum})"
    )
    if concurrency.refusals:
        text += f"; the server refused {concurrency.refusals} requests for a moment, each sent again after its hint"
    return text


def concurrency_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Concurrency:
    """--concurrency N fixes it; otherwise it adapts between --min-concurrency and --max-concurrency."""
    bounded = (args.min_concurrency, args.max_concurrency) != (defaults.MIN_CONCURRENCY, defaults.MAX_CONCURRENCY)
    if args.concurrency is not None:
        if bounded:
            parser.error("--concurrency fixes the requests in flight; --min/--max-concurrency bound the adaptive one")
        return Concurrency(args.concurrency, args.concurrency)
    if args.min_concurrency > args.max_concurrency:
        parser.error(f"--min-concurrency {args.min_concurrency} is over --max-concurrency {args.max_concurrency}")
    return Concurrency(args.min_concurrency, args.max_concurrency)


def exit_status(outcome: Outcome, signal_number: int | None) -> int:
    if outcome.error:
        return EXIT_ERROR
    if outcome.interrupted:
        return 128 + (signal_number or signal.SIGINT)
    return EXIT_FAILED_INPUTS if outcome.failed else EXIT_DONE


def main(argv: list[str] | None = None) -> None:
    try:
        run_command(argv)
    except KeyboardInterrupt:  # before the run's own handler is in place: nothing was sent yet
        print("\npredict-batch: interrupted before starting", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def run_command(argv: list[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = sys.stderr
    try:
        shard = parse_shard(args.shard)
    except ValueError as error:
        parser.error(str(error))
    check_geo_flags(args, parser)
    stopping, abort = threading.Event(), threading.Event()
    backoff = Backoff(tries=args.tries, first_s=args.backoff)
    concurrency = concurrency_from(args, parser)
    try:
        caller = credentials.from_arguments(args)
        predictor = make_predictor(
            args.protocol, args.server, args.model, stopping, backoff, args.timeout, caller, observer=concurrency
        )
    except ValueError as error:
        parser.error(str(error))
    source = geo_source(args, parser, predictor) or source_from(args, parser)
    threshold = threshold_from(args, parser, predictor)
    try:
        if is_geo_run(args):
            sink = geo_sink(args, parser, source, predictor, threshold)
        else:
            sink = open_sink(args.out, table=args.table, threshold=threshold, tiles=isinstance(source, TileSource))
        done = sink.done_keys()
        if getattr(source, "unique", False):  # an area's tiles or a scene's windows: counted, then streamed
            total = shard_count(source.count(), shard)
            skipped = sum(1 for key in shard_keys(source.keys(), shard) if key in done) if done else 0
            todo = (key for key in shard_keys(source.keys(), shard) if key not in done)
        else:
            keys = select(source.keys(), shard)
            total, todo = len(keys), [key for key in keys if key not in done]
            skipped = total - len(todo)
    except ValueError as error:
        parser.error(str(error))
    except (SinkError, OSError) as error:
        print(f"predict-batch: {error}", file=stream)
        sys.exit(EXIT_ERROR)
    outcome = Outcome(total=total, skipped=skipped)
    shard_text = f" (shard {shard})" if shard.count > 1 else ""
    if sink.repaired_bytes:
        print(
            f"predict-batch: cut a torn last line ({sink.repaired_bytes} bytes) left by a run killed mid-write",
            file=stream,
        )
    print(
        f"predict-batch: {total} {source.noun} from {source.describe()}{shard_text}: "
        f"{outcome.skipped} done before, {total - skipped} to do\n"
        f"predict-batch: {predictor.endpoint} ({args.protocol.upper()}, batch {args.batch}, "
        f"concurrency {concurrency.describe()}) -> {sink.describe()}",
        file=stream,
        flush=True,
    )

    received: list[int] = []

    def on_signal(number: int, _frame) -> None:
        received.append(number)
        if stopping.is_set():
            abort.set()
            return
        stopping.set()
        print(
            "\npredict-batch: stopping: committing the requests in flight (Ctrl-C again to stop at once)",
            file=stream,
            flush=True,
        )

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fetcher = reader_of(source) or Fetcher(stopping, backoff, args.fetch_timeout)
    progress = Progress(total - skipped, stream, every_s=args.progress_every, concurrency=concurrency)
    run = BatchRun(
        source, sink, predictor, fetcher,
        batch=args.batch, concurrency=concurrency, fetchers=args.fetchers, stopping=stopping, abort=abort,
    )  # fmt: skip
    status = EXIT_ERROR
    try:
        run.run(todo, outcome, progress)
        status = exit_status(outcome, received[0] if received else None)
    except Exception as error:  # the destination failed (disk full, database gone): what was committed stays
        outcome.error = outcome.error or f"{type(error).__name__}: {error}"
        status = EXIT_ERROR
    try:
        note = sink.close()
        if note:
            print(f"predict-batch: {note}", file=stream)
    except (OSError, ValueError) as error:
        outcome.error = outcome.error or f"could not finish {args.out}: {error}"
        status = EXIT_ERROR
    print_summary(outcome, sink.where_failures, source.noun, stream, concurrency)
    sys.stdout.flush()
    stream.flush()
    # Threads still waiting on a slow download or request must not hold the exit: all that was answered is committed.
    os._exit(status)


if __name__ == "__main__":
    main()
