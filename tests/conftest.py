"""Fixtures: real Learners made by the tests, archived by scripts/make-archive, served by a real TorchServe.

Tests that start servers or run the command-line tools are marked `e2e` (module-wide);
`make test-fast` runs the rest, in-process, with no server and no Java.
"""

from __future__ import annotations

import ast
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness import failure_logs, learners
from harness.servers import Servers, archive_here, refusing_port, stopped_servers_ended

# Models the session's TorchServe serves: name -> (builder, make-archive flags).
# A long batch delay on "classifier", "tabular" and "text" makes concurrent test requests reliably
# share a batch (a batch of 4 requests goes at once); the fuzzing leaves these three out.
SHARED_BATCH = ["--max-batch-delay", "400", "--batch-size", "4"]
LEARNERS_SEED = 0  # the small Learners' (and their data's) random numbers
MODELS = {
    "digits": (None, []),
    "classifier": (learners.make_classifier, ["--max-batch-delay", "400", "--batch-size", "16"]),
    "multilabel": (learners.make_multilabel, []),
    "regressor": (learners.make_regressor, []),
    "segmenter": (learners.make_segmenter, []),
    "with_utils": (learners.make_learner_needing_utils, ["--utils", str(learners.UTILS_DIR)]),
    "tabular": (learners.make_tabular_classifier, SHARED_BATCH),
    "tabular_multilabel": (learners.make_tabular_multilabel, []),
    "tabular_regressor": (learners.make_tabular_regressor, []),
    "tabular_multi_regressor": (learners.make_tabular_multi_regressor, []),
    "text": (learners.make_text_classifier, SHARED_BATCH),
    "text_multilabel": (learners.make_text_multilabel, []),
    "collab": (learners.make_collab, []),
}


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory) -> Path:
    """One torch.compile cache for the session's compiles, in-process and in every server's workers."""
    folder = tmp_path_factory.mktemp("inductor-cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


class Lazily(Mapping):
    """A mapping whose values are made on first use and kept: tests pay only for the models they use."""

    def __init__(self, names: list[str], make: Callable[[str], Any]) -> None:
        self._names, self._make, self._made = names, make, {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The README's demo: digits from scikit-learn, trained offline once for the run (the workers share it): its
    folder. Trained into a folder of its own and renamed when it passed, so a worker never sees half of it."""
    from fastai_serving_scripts.demo import train_digits

    run = shared_by_the_workers(tmp_path_factory)
    demo = run / "demo"
    with open(run / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker to ask trains it; another waits for it here
        if not demo.exists():
            training = Path(tempfile.mkdtemp(prefix="demo-training-", dir=run))
            _, accuracy = train_digits(training)
            assert accuracy > 0.9, f"demo model trained to only {accuracy:.3f} accuracy"
            training.rename(demo)
    return demo


def shared_by_the_workers(tmp_path_factory) -> Path:
    """The run's temp folder, shared by its pytest-xdist workers (each worker's own temp folder is one inside it)."""
    own = tmp_path_factory.getbasetemp()
    return own.parent if os.environ.get("PYTEST_XDIST_WORKER") else own


@pytest.fixture(scope="session")
def small_learners(tmp_path_factory) -> Mapping[str, Path]:
    """The small Learners of each task kind (seconds to train), by model name: their export.pkl, made on first use."""
    from fastai.torch_core import set_seed

    def trained(name: str) -> Path:
        # The same Learner in every run and on every worker, whatever was made before it: a premise such as "the
        # classifier decides some of its images clearly" holds or fails for good, not one run in many.
        set_seed(LEARNERS_SEED)
        return MODELS[name][0](tmp_path_factory.mktemp(name))

    names = [name for name, (builder, _) in MODELS.items() if builder is not None]
    return Lazily(names, trained)


@pytest.fixture(scope="session")
def exported_learners(small_learners, demo_model) -> Mapping[str, Path]:
    """Every test model's export.pkl, by model name."""
    return Lazily(list(MODELS), lambda name: demo_model / "export.pkl" if name == "digits" else small_learners[name])


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, exported_learners) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    for name, (_, flags) in MODELS.items():
        archive_here(name, exported_learners[name], store, *flags)
    return store


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory, model_store):
    """scripts/serve on free loopback ports: TorchServe with every test model, and the shim ("digits" by default)."""
    server = Servers(model_store=model_store, log_dir=tmp_path_factory.mktemp("servers-logs"), default_model="digits")
    server.start(list(MODELS))
    yield server
    server.stop()


# --- make test runs the modules on two workers (pytest-xdist): one of them has the session's server -----------

SESSION_SERVER = "the session's server"  # the one scheduling unit of every module that asks for it
END_TO_END = re.compile(r"^pytestmark\s*=.*\bpytest\.mark\.e2e\b", re.MULTILINE)


SESSION_FIXTURES = {"torchserve", "model_store"}  # the session's server, and the store of every test model it serves


def modules_of_the_suite() -> dict[str, tuple[bool, bool]]:
    """Each test module (as node ids begin: tests/test_x.py): whether a test or fixture of it asks for the session's
    server or its store (which trains and archives every test model), and whether it is end to end."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        source = path.read_text()
        functions = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)]
        arguments = {argument.arg for function in functions for argument in function.args.args}
        sharing = bool(arguments & SESSION_FIXTURES)
        found[f"{path.parent.name}/{path.name}"] = (sharing, bool(END_TO_END.search(source)))
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """A module to a worker, and every module of the session's server to the same one: a second session server
    would train, archive and serve the 13 models again, and two did not fit in 24 GB beside the other servers."""
    from xdist.scheduler import LoadFileScheduling

    modules = modules_of_the_suite()

    def unit(module: str) -> str:
        return SESSION_SERVER if modules.get(module, (False, False))[0] else module

    def rank(scope: str) -> tuple[bool, bool]:  # the longest first: the session's server, then end to end
        return scope != SESSION_SERVER, not modules.get(scope, (False, False))[1]

    class OneWorkerServesTheSession(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit(super()._split_scope(nodeid))

        def _assign_work_unit(self, node) -> None:
            # xdist queues the units with the most tests first; the in-process modules have the most tests and take
            # seconds, the end-to-end ones few tests and minutes: those go first, the short ones fill the ends.
            for scope in sorted(self.workqueue, key=rank):
                self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

    return OneWorkerServesTheSession(config, log)


def pytest_sessionfinish(session):
    stopped_servers_ended()  # the servers fixtures told to stop without waiting


# --- What the session's servers logged while a failed test ran (printed last: CI shows a run's end) ----------

LOG_SIZES = pytest.StashKey[dict]()
STARTED = pytest.StashKey[str]()
FAILED_TESTS_LOGS: list[tuple[str, str]] = []  # (the test and when it ran, digest of the servers' logs meanwhile)
SHOWN_FAILURES = 3
SERVERS_LOGS = "the servers' logs"  # the report property that carries a digest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    servers = item.funcargs.get("torchserve")
    if isinstance(servers, Servers):
        item.stash[LOG_SIZES] = failure_logs.sizes(servers.log_dir)
        item.stash[STARTED] = time.strftime("%H:%M:%S")
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and LOG_SIZES in item.stash:
        digest = failure_logs.digest(item.funcargs["torchserve"].log_dir, item.stash[LOG_SIZES])
        ran = f"{item.nodeid} ran ({item.stash[STARTED]} to {time.strftime('%H:%M:%S')})"
        report.user_properties.append((SERVERS_LOGS, (ran, digest)))  # travels with the report from a worker
    return report


def pytest_runtest_logreport(report):
    """Where the run's summary is printed (the one process, or pytest-xdist's controller), keep each digest."""
    FAILED_TESTS_LOGS.extend(value for name, value in report.user_properties if name == SERVERS_LOGS)


def pytest_terminal_summary(terminalreporter):
    for ran, digest in FAILED_TESTS_LOGS[:SHOWN_FAILURES]:
        terminalreporter.write_sep("-", f"the servers' logs while {ran}")
        terminalreporter.write_line(digest)
    if len(FAILED_TESTS_LOGS) > SHOWN_FAILURES:
        terminalreporter.write_line(f"(and {len(FAILED_TESTS_LOGS) - SHOWN_FAILURES} more failed tests' logs left out)")


@pytest.fixture(scope="session")
def loaded_learners(exported_learners) -> Mapping[str, Any]:
    """The same Learners loaded in-process (on first use), for comparing with what the server answers."""
    from fastai_serving.engine.learner import load_learner

    return Lazily(
        list(MODELS),
        lambda name: load_learner(
            exported_learners[name], utils_dir=learners.UTILS_DIR if name == "with_utils" else None
        ),
    )


@pytest.fixture(scope="session")
def fresh_learners(exported_learners) -> Mapping[str, Any]:
    """The exports as fastai itself loads them (`fastai.learner.load_learner`), for `learn.predict`."""
    import warnings

    from fastai.learner import load_learner

    def load(name: str) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*insecure pickle.*")
            learn = load_learner(exported_learners[name])
        learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
        return learn

    return Lazily(list(MODELS), load)


@pytest.fixture(scope="session")
def digits_only_store(tmp_path_factory, exported_learners) -> Path:
    """A model store with the demo model alone, for tests that start servers of their own."""
    store = tmp_path_factory.mktemp("digits_store")
    archive_here("digits", exported_learners["digits"], store)
    return store


@pytest.fixture
def nothing_listens() -> Iterator[int]:
    """A loopback port that refuses every connection for the test's length (held, so no server can take it)."""
    with refusing_port() as port:
        yield port
