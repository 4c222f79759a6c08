"""Where results go, each committed as it arrives, so a killed run resumes with every key exactly once.

How each destination remembers what is done (a rerun with the same arguments reads it back):
- JSON Lines and CSV: the output file itself. Answers are appended as they arrive (whatever has
  queued up, in one write) and fsync'ed, so a line is either whole on disk or the last, torn
  one. A rerun scans the file, cuts off a torn last line (a run killed mid-write), and skips
  every key the file holds. No sidecar state to drift from the output; an exclusive lock on the
  file keeps two runs from writing it at once.
- GeoJSON is one JSON document, not appendable: results go to `<out>.jsonl` as above, and the
  FeatureCollection is written from it (to a temporary file, then renamed) at the end of every
  run, an interrupted one included. A rerun with another --threshold predicts nothing again.
- PostgreSQL: chip-n-scale's table `results (tile varchar primary key, output jsonb)` itself, a
  transaction per commit of the answers that have arrived, written with upserts (`ON CONFLICT (tile) DO UPDATE`, as
  chip-n-scale's own writer does). The primary key makes a key exactly once whatever happens,
  and shards writing one table at once need no coordination; a rerun skips the keys the table holds.
Inputs that failed for good are recorded beside the results with their reason: `<out>.failed.jsonl`
for files, table `<table>_failed` for PostgreSQL. A rerun tries them again, and a key that then
succeeds leaves that record.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from . import defaults
from .tiles import parse_tile, tile_polygon

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CSV_HEADER = ["tile", "output"]  # chip-n-scale's `yarn download` shape
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")


class SinkError(Exception):
    """The destination cannot be used as it is (locked, not ours, unreachable): nothing was changed."""


class Sink(Protocol):
    where_failures: str  # where failed inputs are recorded, for the summary
    repaired_bytes: int  # a torn last line cut off when opened (a run killed mid-write), in bytes

    def done_keys(self) -> set[str]:
        """Keys whose results are already committed."""

    def earlier_failures(self) -> dict[str, str]:
        """Keys recorded as failed by earlier runs, with their reasons."""

    def commit(self, results: list[tuple[str, Any]]) -> None:
        """Store (key, prediction) pairs durably before returning."""

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        """Store (key, reason) pairs of inputs that failed for good."""

    def close(self) -> str:
        """Finish (render, compact, disconnect); returns a line for the person, or ''."""

    def describe(self) -> str:
        """The destination, for the first line a person reads (no password)."""


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class FailureFile:
    """`<out>.failed.jsonl`: {"key", "reason"} lines, appended as failures happen, rewritten at the end of a run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        failures: dict[str, str] = {}
        if not self.path.exists():
            return failures
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                failures[str(record["key"])] = str(record["reason"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: the key was not done, so the next run tries it anyway
        return failures

    def record(self, failures: list[tuple[str, str]]) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write("".join(json.dumps({"key": key, "reason": reason}) + "\n" for key, reason in failures))

    def rewrite(self, failures: dict[str, str]) -> None:
        """Exactly these failures (none: no file), replacing the file in one rename."""
        if not failures:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(
            "".join(json.dumps({"key": key, "reason": reason}) + "\n" for key, reason in failures.items()),
            encoding="utf-8",
        )
        os.replace(temporary, self.path)


class LineFileSink:
    """A file of one result a line, appended and fsync'ed per batch; its own content is the resume state."""

    kind = "lines"
    header: str | None = None

    def __init__(self, path: Path, failures_path: Path | None = None) -> None:
        self.path = path
        self.failures = FailureFile(failures_path or path.with_name(path.name + ".failed.jsonl"))
        self.where_failures = str(self.failures.path)
        self.repaired_bytes = 0
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise SinkError(f"cannot open {path}: {error.strerror}") from error
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(self.fd)
            raise SinkError(f"another predict-batch is writing {path}: give each process its own file") from error
        try:
            self._done = self._scan()
            self._failed = self.failures.load()
            if self.header and os.fstat(self.fd).st_size == 0:
                self._append(self.header + "\n")
        except BaseException:
            os.close(self.fd)  # and with it the lock
            raise

    def encode(self, key: str, prediction: Any) -> str:
        raise NotImplementedError

    def decode_key(self, line: str) -> str:
        """The key of one line this sink wrote; ValueError for anything else."""
        raise NotImplementedError

    def _scan(self) -> set[str]:
        """Keys of the file's whole lines; a torn last line (a run killed mid-write) is cut off."""
        done: set[str] = set()
        whole = 0
        with open(self.path, "rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.endswith(b"\n"):
                    break
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if number == 1 and self.header is not None:
                    if text != self.header:
                        raise SinkError(
                            f"{self.path} is not a predict-batch {self.kind} file: its first line is not {self.header}"
                        )
                else:
                    try:
                        done.add(self.decode_key(text))
                    except (ValueError, KeyError, TypeError, IndexError) as error:
                        raise SinkError(
                            f"{self.path}, line {number}, is not a predict-batch result ({error}); "
                            "move the file away or fix that line"
                        ) from error
                whole += len(raw)
        size = os.fstat(self.fd).st_size
        if size > whole:
            os.ftruncate(self.fd, whole)
            os.fsync(self.fd)
            self.repaired_bytes = size - whole
        return done

    def _append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)  # durable before the next batch is taken in hand: a kill loses nothing committed

    def done_keys(self) -> set[str]:
        return set(self._done)

    def earlier_failures(self) -> dict[str, str]:
        return {key: reason for key, reason in self._failed.items() if key not in self._done}

    def commit(self, results: list[tuple[str, Any]]) -> None:
        if results:
            self._append("".join(self.encode(key, prediction) for key, prediction in results))
            self._done.update(key for key, _ in results)

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        if failures:
            self.failures.record(failures)
            self._failed.update(failures)

    def close(self) -> str:
        self.failures.rewrite(self.earlier_failures())
        os.close(self.fd)
        return ""

    def describe(self) -> str:
        return str(self.path)


class JsonLinesSink(LineFileSink):
    """`.jsonl`: {"key": ..., "prediction": ...} a line."""

    kind = "JSON Lines"

    def encode(self, key: str, prediction: Any) -> str:
        return json.dumps({"key": key, "prediction": prediction}, separators=(",", ":")) + "\n"

    def decode_key(self, line: str) -> str:
        key = json.loads(line)["key"]
        if not isinstance(key, str):
            raise ValueError("its key is not a string")
        return key

    def results(self) -> Iterator[tuple[str, Any]]:
        """Every (key, prediction) in the file, in file order, one line at a time."""
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                yield record["key"], record["prediction"]


class CsvSink(LineFileSink):
    """`.csv` in chip-n-scale's download shape: a `tile,output` header, then the key and the prediction as JSON.

    Written as standard CSV (RFC 4180: a field holding commas is quoted), so any CSV reader gets
    two columns, and chip-n-scale's convert-geojson, which joins the fields after the first, reads it unchanged.
    """

    kind = "CSV"
    header = ",".join(CSV_HEADER)

    def encode(self, key: str, prediction: Any) -> str:
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([key, compact_json(prediction)])
        return line.getvalue()

    def decode_key(self, line: str) -> str:
        fields = next(csv.reader([line]))
        json.loads(",".join(fields[1:]))  # as convert-geojson reads it
        return fields[0]


class GeoJsonSink:
    """`.geojson` for tiles: a Polygon per tile with its probabilities, as chip-n-scale's convert-geojson makes.

    Results are committed to `<out>.jsonl`; `close` writes the FeatureCollection from it.
    `threshold` (class index, value) keeps a tile only where its probability for that class,
    rounded to 2 decimals, is at least value: convert-geojson's --thresh-ind and --thresh.
    Properties are `p0`, `p1`, ... rounded to 2 decimals (convert-geojson's), and `tile`.
    """

    def __init__(
        self,
        path: Path,
        threshold: tuple[int, float] | None = None,
        geometry: Callable[[str], dict] | None = None,
        key_name: str = "tile",
    ) -> None:
        self.path, self.threshold = path, threshold
        self.geometry, self.key_name = geometry, key_name  # scene windows have their own footprints (places.py)
        self.journal = JsonLinesSink(path.with_name(path.name + ".jsonl"), path.with_name(path.name + ".failed.jsonl"))
        self.where_failures = self.journal.where_failures
        self.repaired_bytes = self.journal.repaired_bytes
        self.done_keys = self.journal.done_keys
        self.earlier_failures = self.journal.earlier_failures
        self.commit = self.journal.commit
        self.record_failures = self.journal.record_failures

    def close(self) -> str:
        self.journal.close()
        kept, total = self.render()
        chosen = "" if self.threshold is None else f" (class {self.threshold[0]} >= {self.threshold[1]})"
        return f"wrote {self.path}: {kept} of {total} {self.key_name}s{chosen}"

    def render(self) -> tuple[int, int]:
        """Write the FeatureCollection from the journal; returns (features written, results read)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        kept = total = 0
        with open(temporary, "w", encoding="utf-8") as out:
            out.write('{"type": "FeatureCollection", "features": [')
            for key, prediction in self.journal.results():
                total += 1
                feature = tile_feature(key, prediction, self.threshold, self.geometry, self.key_name)
                if feature is not None:
                    out.write(("\n" if kept == 0 else ",\n") + json.dumps(feature))
                    kept += 1
            out.write("\n]}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        return kept, total

    def describe(self) -> str:
        return f"{self.path} (results kept in {self.journal.path})"


def tile_feature(
    key: str,
    prediction: Any,
    threshold: tuple[int, float] | None,
    geometry: Callable[[str], dict] | None = None,
    key_name: str = "tile",
) -> dict | None:
    """One tile's (or window's) GeoJSON Feature, or None where the threshold leaves it out (convert-geojson's rule)."""
    if not isinstance(prediction, list) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in prediction
    ):
        raise ValueError(
            f"GeoJSON needs a list of probabilities per {key_name}; {key_name} {key} has {compact_json(prediction)[:80]}"
        )
    rounded = [round(value, 2) for value in prediction]
    if threshold is not None:
        index, value = threshold
        if index >= len(rounded):
            raise ValueError(f"--threshold class {index}: {key_name} {key} has only {len(rounded)} probabilities")
        if rounded[index] < value:
            return None
    properties = {f"p{index}": value for index, value in enumerate(rounded)}
    return {
        "type": "Feature",
        "id": key,
        "geometry": geometry(key) if geometry else tile_polygon(parse_tile(key)),
        "properties": {key_name: key, **properties},
    }


def masked(url: str) -> str:
    """A database URL fit to print: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresSink:
    """chip-n-scale's table `<table> (tile varchar primary key, output jsonb)`, created if missing, written with upserts."""

    def __init__(self, url: str, table: str) -> None:
        import psycopg  # only for this destination: the file destinations need no driver
        from psycopg import sql
        from psycopg.types.json import Jsonb

        if not _TABLE_NAME.match(table):
            raise ValueError(f"--table {table!r}: use letters, digits and underscores")
        self.url, self.table = url, table
        self.where_failures = f"table {table}_failed"
        self.repaired_bytes = 0  # a transaction is whole or absent: nothing to repair
        self._psycopg, self._jsonb = psycopg, Jsonb
        results, failed = sql.Identifier(table), sql.Identifier(f"{table}_failed")
        try:
            self.connection = psycopg.connect(url, connect_timeout=defaults.DATABASE_CONNECT_TIMEOUT_S)
        except psycopg.Error as error:
            raise SinkError(f"cannot connect to {masked(url)}: {str(error).strip()}") from error
        self._create(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (tile varchar PRIMARY KEY, output jsonb)").format(results),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (tile varchar PRIMARY KEY, reason text NOT NULL, "
                "failed_at timestamptz NOT NULL DEFAULT now())"
            ).format(failed),
        )
        self._upsert = sql.SQL(
            "INSERT INTO {} (tile, output) VALUES (%s, %s) ON CONFLICT (tile) DO UPDATE SET output = EXCLUDED.output"
        ).format(results)
        self._forget_failed = sql.SQL("DELETE FROM {} WHERE tile = ANY(%s)").format(failed)
        self._record_failed = sql.SQL(
            "INSERT INTO {} (tile, reason) VALUES (%s, %s) "
            "ON CONFLICT (tile) DO UPDATE SET reason = EXCLUDED.reason, failed_at = now()"
        ).format(failed)
        self._select_done = sql.SQL("SELECT tile FROM {}").format(results)
        self._select_failed = sql.SQL("SELECT tile, reason FROM {} WHERE tile NOT IN (SELECT tile FROM {})").format(
            failed, results
        )

    def _create(self, *statements) -> None:
        """CREATE TABLE IF NOT EXISTS, tolerant of shards creating the same table at the same moment."""
        errors = self._psycopg.errors
        for statement in statements:
            try:
                with self.connection.transaction():
                    self.connection.execute(statement)
            except (errors.UniqueViolation, errors.DuplicateTable):
                pass  # another shard created it first
        self.connection.commit()

    def done_keys(self) -> set[str]:
        with self.connection.cursor() as cursor:
            cursor.execute(self._select_done)
            keys = {row[0] for row in cursor}
        self.connection.commit()
        return keys

    def earlier_failures(self) -> dict[str, str]:
        with self.connection.cursor() as cursor:
            cursor.execute(self._select_failed)
            failures = {tile: reason for tile, reason in cursor}
        self.connection.commit()
        return failures

    def commit(self, results: list[tuple[str, Any]]) -> None:
        if not results:
            return
        with self.connection.cursor() as cursor:
            cursor.executemany(self._upsert, [(key, self._jsonb(prediction)) for key, prediction in results])
            cursor.execute(self._forget_failed, ([key for key, _ in results],))
        self.connection.commit()

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        if not failures:
            return
        with self.connection.cursor() as cursor:
            cursor.executemany(self._record_failed, failures)
        self.connection.commit()

    def close(self) -> str:
        self.connection.close()
        return ""

    def describe(self) -> str:
        return f"{masked(self.url)} table {self.table}"


def open_sink(out: str, *, table: str, threshold: tuple[int, float] | None, tiles: bool) -> Sink:
    """The destination `--out` names, by its form: a postgres(ql):// URL, or a .jsonl, .csv or .geojson file.

    ValueError: the arguments do not fit together; SinkError: the destination cannot be used.
    """
    if out.startswith(POSTGRES_SCHEMES):
        return PostgresSink(out, table)
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".geojson":
        if not tiles:
            raise ValueError("a .geojson output needs tiles (--tiles and --imagery): its polygons are the tiles")
        return GeoJsonSink(path, threshold)
    if threshold is not None:
        raise ValueError("--threshold applies to a .geojson output only (chip-n-scale's convert-geojson)")
    if suffix == ".jsonl":
        return JsonLinesSink(path)
    if suffix == ".csv":
        return CsvSink(path)
    raise ValueError(f"--out {out!r}: give a .jsonl, .csv or .geojson file, or a postgresql:// URL")
