"""Fixtures: real Learners made by the tests, archived by scripts/make-archive, served by a real TorchServe.

Tests that start servers or run the command-line tools are marked `e2e` (module-wide);
`make test-fast` runs the rest, in-process, with no server and no Java.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import learners
from harness.servers import Servers, make_archive

# Models the session's TorchServe serves: name -> (builder, make-archive flags).
# A long batch delay on "classifier" makes concurrent test requests reliably share a batch.
MODELS = {
    "digits": (None, []),
    "classifier": (learners.make_classifier, ["--max-batch-delay", "400", "--batch-size", "16"]),
    "multilabel": (learners.make_multilabel, []),
    "regressor": (learners.make_regressor, []),
    "segmenter": (learners.make_segmenter, []),
    "with_utils": (learners.make_learner_needing_utils, ["--utils", str(learners.UTILS_DIR)]),
}


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory) -> Path:
    """One torch.compile cache for the session's compiles, in-process and in every server's workers."""
    folder = tmp_path_factory.mktemp("inductor-cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The README's demo: digits from scikit-learn, trained offline. Returns its folder."""
    from harness.demo import train_digits

    out = tmp_path_factory.mktemp("demo")
    _, accuracy = train_digits(out)
    assert accuracy > 0.9, f"demo model trained to only {accuracy:.3f} accuracy"
    return out


@pytest.fixture(scope="session")
def small_learners(tmp_path_factory) -> dict[str, Path]:
    """The small Learners of each task kind (seconds to train), by model name: their export.pkl."""
    return {
        name: builder(tmp_path_factory.mktemp(name)) for name, (builder, _) in MODELS.items() if builder is not None
    }


@pytest.fixture(scope="session")
def exported_learners(small_learners, demo_model) -> dict[str, Path]:
    """Every test model's export.pkl, by model name."""
    return {"digits": demo_model / "export.pkl", **small_learners}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, exported_learners) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    for name, (_, flags) in MODELS.items():
        result = make_archive(name, exported_learners[name], store, *flags)
        assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory, model_store):
    """scripts/serve on free loopback ports: TorchServe with every test model, and the shim ("digits" by default)."""
    server = Servers(model_store=model_store, log_dir=tmp_path_factory.mktemp("servers-logs"), default_model="digits")
    server.start(list(MODELS))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def loaded_learners(exported_learners):
    """The same Learners loaded in-process, for comparing with what the server answers."""
    from fastai_serving.learner import load_learner

    return {
        name: load_learner(path, utils_dir=learners.UTILS_DIR if name == "with_utils" else None)
        for name, path in exported_learners.items()
    }


@pytest.fixture(scope="session")
def digits_only_store(tmp_path_factory, exported_learners) -> Path:
    """A model store with the demo model alone, for tests that start servers of their own."""
    store = tmp_path_factory.mktemp("digits_store")
    assert make_archive("digits", exported_learners["digits"], store).returncode == 0
    return store
