"""The docs' examples, run as a reader runs them: against the models `make examples` archives, served with the demo.

docs/api.md's `curl` examples (tabular, text, collaborative filtering, TorchServe's `?customized=true`) run in
bash as written, their URLs pointed at this test's servers; each answer must have the documented shape: the
same keys, list lengths and strings (a class label may be any of the model's classes: the models are barely
trained, and each build trains anew), numbers where numbers are shown, and every error word for word.
docs/v2.md's KServe snippet runs with KServe's own client.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness import examples
from harness.servers import ROOT, Servers, archive_here
from harness.v2_clients import V2CLIENT_VENV

pytestmark = pytest.mark.e2e

API_PAGE = ROOT / "docs" / "api.md"
V2_PAGE = ROOT / "docs" / "v2.md"
DOCUMENTED = {"shim": "http://127.0.0.1:8501", "management": "http://127.0.0.1:8081"}  # the addresses the docs use
PART = re.compile(r"#\s*([\w.\[\]]+):\s*$")  # a command's trailing "# metadata.fastai:": the answer's part shown


@dataclass
class Example:
    command: str
    output: str  # the documented answer (JSON)
    part: str  # where in the answer the documented output sits ("" for the whole answer)


def console_examples(page: Path) -> list[Example]:
    """Each `$ curl ...` of the page's console blocks with the output printed under it."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.S):
        lines, index = block.splitlines(), 0
        while index < len(lines):
            if not lines[index].startswith("$ "):
                index += 1
                continue
            command, index = lines[index][2:], index + 1
            while _continues(command):
                command, index = f"{command}\n{lines[index]}", index + 1
            output = []
            while index < len(lines) and lines[index].strip() and not lines[index].startswith("$ "):
                output, index = [*output, lines[index]], index + 1
            part = PART.search(command)
            if command.startswith("curl "):
                found.append(Example(command, "\n".join(output), part.group(1) if part else ""))
    return found


def _continues(command: str) -> bool:
    """Whether a command goes on past its line: a trailing backslash, or a single quote still open (the docs
    quote JSON bodies in single quotes)."""
    return command.endswith("\\") or command.count("'") % 2 == 1


def part_of(answer, part: str):
    """`answer`'s part named like "[0].customizedMetadata" or "metadata.fastai"."""
    for key in re.findall(r"\[(\d+)\]|([^.\[\]]+)", part):
        answer = answer[int(key[0])] if key[0] else answer[key[1]]
    return answer


def shape(value, labels: set[str]):
    """What a documented answer promises: keys, lengths and strings as they are, numbers as numbers, a class label
    as any class label."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return "<number>"
    if isinstance(value, str):
        return "<class label>" if value in labels else value
    if isinstance(value, list):
        return [shape(item, labels) for item in value]
    return {key: shape(item, labels) for key, item in value.items()}


@pytest.fixture(scope="module")
def examples_servers(tmp_path_factory, demo_model):
    """What a reader serves after `make examples`: the demo model and the docs' example models."""
    store = tmp_path_factory.mktemp("examples-store")
    archive_here("digits", demo_model / "export.pkl", store)
    examples.main(["--store", str(store), "--work", str(tmp_path_factory.mktemp("examples-work"))])
    servers = Servers(model_store=store, log_dir=tmp_path_factory.mktemp("examples-logs"), default_model="digits")
    yield servers.start(["digits", *examples.EXAMPLES])
    servers.stop(wait=False)


def class_labels(servers: Servers) -> set[str]:
    labels = set()
    for model in examples.EXAMPLES:
        metadata = requests.get(f"{servers.shim}/v1/models/{model}/metadata", timeout=60).json()["metadata"]
        labels |= set(metadata["fastai"]["classes"])
    return labels


def test_make_examples_archives_every_model_the_docs_call():
    called = set()
    for example in console_examples(API_PAGE):
        called |= set(re.findall(r"/models/(\w+)", example.command))
    called |= set(re.findall(r'InferRequest\("(\w+)"', V2_PAGE.read_text()))
    assert called - {"digits"} <= set(examples.EXAMPLES)
    assert {"tabular", "prices", "collab", "reviews"} <= called


@pytest.mark.parametrize("index", range(len(console_examples(API_PAGE))))
def test_each_curl_example_of_the_api_page_answers_as_documented(examples_servers, index):
    example = console_examples(API_PAGE)[index]
    command = example.command.replace(DOCUMENTED["shim"], examples_servers.shim)
    command = command.replace(DOCUMENTED["management"], examples_servers.management)
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    answer = part_of(json.loads(ran.stdout), example.part)
    labels = class_labels(examples_servers)
    assert shape(answer, labels) == shape(json.loads(example.output), labels), f"{example.command}\n{ran.stdout}"


def test_the_v2_pages_kserve_snippet_answers_with_kserves_own_client(examples_servers):
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", V2_PAGE.read_text(), re.S) if "kserve" in block]
    shown = "print(json.dumps([[output.name, output.datatype, list(output.shape)] for output in answer.outputs]))"
    # The page says "in an async function": this is that function, then what its answer holds.
    function = textwrap.indent(snippet + shown, "    ")
    program = f"import asyncio, json\n\nasync def main():\n{function}\n\nasyncio.run(main())\n"
    program = program.replace("http://localhost:8501", examples_servers.shim)
    ran = subprocess.run(
        [str(V2CLIENT_VENV / "bin" / "python"), "-c", program], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == [["probabilities", "FP32", [2, 3]]]
