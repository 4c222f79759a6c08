"""What the session's servers logged while a test ran: printed at the end of a run for each test that failed.

A failed end-to-end test's traceback says what its client saw; these lines say where the request went:
serve's own output (nginx's and gunicorn's errors among it), TorchServe's errors, the handler's, and
TorchServe's answers (an access line is written when TorchServe answers: a request missing there never
reached it, or was never answered). CI shows the end of a run's output, so they come last, and short.
"""

from __future__ import annotations

import re
from pathlib import Path

LINES_PER_LOG = 8
LINE_CHARS = 220
SLOW_ANSWER_MS = 5000  # an access line slower than this is listed
# Which lines of each log are worth a failure report: serve.out all (it is short), the rest their errors.
WORTH = {
    "serve.out": lambda line: True,
    "ts_log.log": lambda line: "[WARN " in line or "[ERROR" in line,
    "model_log.log": lambda line: "[ERROR" in line or "Traceback" in line or "Error:" in line,
}
ACCESS_LOG = "access_log.log"
ANSWER = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)$')  # TorchServe's access line: method path status ms


def sizes(log_dir: Path) -> dict[str, int]:
    """Each log's size now, to read only what is written after."""
    return {name: _size(log_dir / name) for name in (*WORTH, ACCESS_LOG)}


def digest(log_dir: Path, since: dict[str, int]) -> str:
    """The lines worth reading of what each log got after `since`, a few per log, the latest ones."""
    parts = []
    for name, worth in WORTH.items():
        lines = [line for line in _written(log_dir / name, since.get(name, 0)) if worth(line)]
        parts += _section(name, lines)
    answers = _written(log_dir / ACCESS_LOG, since.get(ACCESS_LOG, 0))
    notable = [line for line in answers if _notable(line)]
    summary = f"{len(answers)} answers by TorchServe; errors and answers over {SLOW_ANSWER_MS} ms:"
    parts += _section(ACCESS_LOG, notable, summary)
    last = [line for line in answers if "/predictions/" in line][-3:]
    parts += _section(ACCESS_LOG, last, "its last predictions:") if last else []
    return "\n".join(parts)


def _notable(line: str) -> bool:
    match = ANSWER.search(line)
    return bool(match) and (int(match.group(3)) >= 500 or int(match.group(4)) > SLOW_ANSWER_MS)


def _section(name: str, lines: list[str], heading: str = "") -> list[str]:
    if not lines and not heading:
        return []
    shown = [line[:LINE_CHARS] for line in lines[-LINES_PER_LOG:]]
    skipped = [f"  ({len(lines) - len(shown)} earlier lines left out)"] if len(lines) > len(shown) else []
    header = f"{name}: {heading}" if heading else f"{name}:"
    return [header, *skipped, *(f"  {line}" for line in shown)]


def _written(path: Path, offset: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
