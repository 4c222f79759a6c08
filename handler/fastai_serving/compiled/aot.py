"""Ahead-of-time compiled archives (make-archive --compile aot): compiled once, at archive time, loaded by workers.

make-archive exports the Learner's model with a dynamic batch dimension (`torch.export`),
packages it with AOTInductor into a `.pt2`, checks it against eager on sample images, and
puts it in the archive with a record of the machine it was built for. A worker loads the
package (well under a second, no compile), warms it, and serves; on a machine of another
kind (torch version, device, CPU instruction set, precision) it serves eager and says why.
docs/compile.md has the measurements behind the choices here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..contract.vocabulary import MULTI_LABEL, REGRESSION, VISION
from ..engine.learner import BF16, FP32, ServedLearner
from .worker import CompileReport, sample_image, split_fastai_cast

logger = logging.getLogger(__name__)

AOT_DIR_IN_ARCHIVE = "aot"  # the archive's folder holding the package and its record
PACKAGE_FILE = "model.pt2"
BUILT_FOR_FILE = "built_for.json"
# Freezing folds the weights into the graph and calls oneDNN's convolutions: 1.2-1.4x eager here, and a
# faster build than the default; max_autotune paid nothing on CPU for minutes more (docs/compile.md).
INDUCTOR_CONFIGS = {"freezing": True}
# Largest difference from eager in fp32: absolute on probabilities and scores (each between 0 and 1); on a
# regression's values, relative to their size (at least 1), since kernels' float rounding grows with the value
# (seen: 1.07e-4 on values near 9, which an absolute 1e-4 refused on an AVX-512 CPU and an AVX2 one accepted).
FP32_TOLERANCE = 1e-4
BF16_AGREEMENT = 0.99  # share of eager bf16's clear decisions (classes, labels, mask pixels) the package makes too
# A decision eager bf16 makes by less than this (its two likeliest classes' probabilities, or a label's
# probability and the threshold, this close) is a tie that bf16's rounding in another kernel may break
# either way (seen: 0.013 apart, flipped on an AVX2 CPU): not compared.
BF16_TIE_MARGIN = 2e-2
BF16_REGRESSION_TOLERANCE = 2e-2  # bf16 regression: difference from eager relative to the value's size
SAMPLE_SEED = 22


@dataclass(frozen=True)
class MachineKind:
    """What a package is tied to: torch's version, the device kind, the CPU's vector instruction set, the precision."""

    torch: str
    device: str
    cpu_capability: str
    precision: str
    gpu: str = ""

    def describe(self) -> dict[str, str]:
        return asdict(self)

    def mismatch(self, built_for: MachineKind) -> str:
        """Empty when a package built for `built_for` runs here; else which of its facts differ."""
        differences = [
            f"{name} {theirs!r} (here {ours!r})"
            for name, ours, theirs in zip(
                built_for.describe(), self.describe().values(), built_for.describe().values(), strict=True
            )
            if ours != theirs
        ]
        return ", ".join(differences)


def this_machine(device: torch.device, precision: str) -> MachineKind:
    """This process's machine kind, for `device` and the precision the Learner serves in."""
    gpu = ""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return MachineKind(
        torch=torch.__version__,
        device=device.type,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        precision=precision,
        gpu=gpu,
    )


class AotModel(nn.Module):
    """The loaded package in the Learner's place, with the model's own last layer (`tail`) after it.

    Batches larger than the package's batch dimension allows (the handler never sends one) run eager.
    """

    def __init__(self, eager: nn.Module, package: Any, max_batch: int, tail: nn.Module | None) -> None:
        super().__init__()
        self.eager = eager  # kept for the fallback and for fastai's own uses of the module
        self.package = package
        self.max_batch = max_batch
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> Any:
        if images.shape[0] > self.max_batch:
            return self.eager(images)
        return self.tail(self.package(images.as_subclass(torch.Tensor).contiguous()))


class PackageRunner:
    """A loaded package, called as the model: one batch tensor in, one tensor out."""

    def __init__(self, path: Path) -> None:
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (outputs,) = self.loader.boxed_run([images])
        return outputs


def open_package(path: Path) -> PackageRunner:
    """The package at `path`, loaded by AOTInductor's own loader: no compile and no inductor import.

    torch's `aoti_load_package` also compares the package's CPU ISA with this machine's, by compiling
    probe programs with the C++ compiler (66 s of a worker's first start here); `load_package` has
    already checked the machine kind from the archive's record, so that step is left out.
    """
    return PackageRunner(path)


class _Autocast(nn.Module):
    """bfloat16 autocast inside the exported graph: the package runs in the precision it was checked in."""

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, images: torch.Tensor) -> Any:
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
            return self.model(images)


def refusal(served: ServedLearner) -> str:
    """Why this Learner cannot be compiled ahead of time, or "" if it can be tried."""
    if served.kind != VISION:
        return (
            f"--compile aot serves vision Learners; a {served.kind} Learner's forward takes fastai's own batch "
            "(category codes and continuous columns, or token ids of any length) and runs eager"
        )
    if sample_image(served.learn) is None:
        return "the Learner keeps each input's own size (no Resize), so it cannot be compiled ahead of requests"
    return ""


def build_package(served: ServedLearner, max_batch: int, folder: Path) -> CompileReport:
    """Export, package and check the model into `folder` (package and record); on any failure, say why."""
    began = time.perf_counter()
    reason = refusal(served)
    if reason:
        return CompileReport(compiled=False, error=reason, mode="aot")
    body, tail = split_fastai_cast(served.learn.model)
    exported_model = _Autocast(body, served.device.type) if served.precision == BF16 else body
    example = _example_batch(served, 2)  # two rows: a batch of one would make export specialise the dimension
    try:
        batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
        with torch.no_grad():
            program = torch.export.export(exported_model, (example,), dynamic_shapes=({0: batch},))
        folder.mkdir(parents=True, exist_ok=True)
        package_path = torch._inductor.aoti_compile_and_package(
            program, package_path=str(folder / PACKAGE_FILE), inductor_configs=INDUCTOR_CONFIGS
        )
        package = open_package(Path(package_path))
    except Exception as error:  # export and inductor raise many kinds; make-archive refuses with the reason
        return CompileReport(compiled=False, error=f"{type(error).__name__}: {str(error)[:300]}", mode="aot")
    built_for = this_machine(served.device, served.precision)
    mismatch = check_against_eager(served, AotModel(served.learn.model, package, max_batch, tail), max_batch)
    if mismatch:
        return CompileReport(compiled=False, error=mismatch, mode="aot")
    (folder / BUILT_FOR_FILE).write_text(json.dumps(built_for.describe(), indent=1) + "\n")
    return CompileReport(
        compiled=True,
        seconds=time.perf_counter() - began,
        batch_sizes=(1, max_batch),
        mode="aot",
        built_for=built_for.describe(),
    )


def check_against_eager(served: ServedLearner, model: nn.Module, max_batch: int) -> str:
    """ "" if `model` answers sample images as the eager model does (fp32: within 1e-4, a regression's values
    relative to their size; bf16: the same decoded answers for 99% of the clear decisions, ties within bf16's
    rounding left out, and a regression's values within 2% of their size), else what differed.
    Sizes: one image, a full batch and a tail."""
    from ..engine.predict import predict_images

    images = sample_images(served, max_batch + max(1, max_batch // 2))
    learn, eager = served.learn, served.learn.model
    try:
        expected = [*predict_images(served, images, max_batch), *predict_images(served, images[:1], max_batch)]
        learn.model = model
        answered = [*predict_images(served, images, max_batch), *predict_images(served, images[:1], max_batch)]
    finally:
        learn.model = eager
    outputs = torch.stack([p.output for p in answered]).float()
    reference = torch.stack([p.output for p in expected]).float()
    if served.precision == FP32 or served.task == REGRESSION:
        tolerance = FP32_TOLERANCE if served.precision == FP32 else BF16_REGRESSION_TOLERANCE
        return output_mismatch(served.task, outputs, reference, tolerance)
    agreement = decision_agreement(served, answered, expected)
    if agreement is None:
        return ""  # every sample is a tie within bf16's rounding: there is no decision to compare
    if agreement < BF16_AGREEMENT:
        return (
            f"the package agrees with eager bf16 on {agreement:.1%} of the decisions eager makes by more than"
            f" {BF16_TIE_MARGIN:g} (at least {BF16_AGREEMENT:.0%} wanted)"
        )
    return ""


def output_mismatch(task: str, outputs: torch.Tensor, reference: torch.Tensor, tolerance: float) -> str:
    """ "" if `outputs` are within `tolerance` of eager's `reference`, else by how much they differ: a regression's
    values relative to their size (at least 1: values near 0 are compared absolutely), anything else (probabilities,
    scores) absolutely."""
    scale = reference.abs().clamp(min=1.0) if task == REGRESSION else 1.0
    difference = ((outputs - reference).abs() / scale).max().item()
    if difference > tolerance:
        what = (
            "values differ from eager's, relative to their size,"
            if task == REGRESSION
            else "outputs differ from eager's"
        )
        return f"the package's {what} by {difference:.2e} (at most {tolerance:g} allowed)"
    return ""


def decision_agreement(served: ServedLearner, answered: list, expected: list) -> float | None:
    """The share of `expected`'s clear decisions (clear_decisions) that `answered` makes too; None if it has none.
    Both: Predictions of the same instances, in order."""
    clear = clear_decisions(served, torch.stack([p.output for p in expected]).float())
    if not clear.any():
        return None
    same = torch.stack([p.decoded for p in answered]) == torch.stack([p.decoded for p in expected])
    return same[clear].float().mean().item()


def clear_decisions(served: ServedLearner, outputs: torch.Tensor) -> torch.Tensor:
    """Which decoded answers eager makes by more than bf16's rounding, shaped as the decoded answers: a class (or
    mask pixel) whose two likeliest probabilities are more than BF16_TIE_MARGIN apart, a label whose probability
    is that far from the threshold. `outputs`: probabilities, instances stacked on dimension 0."""
    if served.task == MULTI_LABEL:
        threshold = getattr(served.learn.loss_func, "thresh", 0.5)
        return (outputs - threshold).abs() > BF16_TIE_MARGIN
    likeliest = outputs.topk(2, dim=1).values
    return (likeliest[:, 0] - likeliest[:, 1]) > BF16_TIE_MARGIN


def sample_images(served: ServedLearner, count: int) -> list[Image.Image]:
    """`count` noise images of the size the Learner resizes to: every class, label and pixel gets some signal."""
    size = sample_image(served.learn).size
    rng = np.random.default_rng(SAMPLE_SEED)
    return [
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB") for _ in range(count)
    ]


def _example_batch(served: ServedLearner, count: int) -> torch.Tensor:
    """A batch as the model receives it: decoded, resized and normalised by the Learner's own pipeline."""
    test_dl = served.learn.dls.test_dl(sample_images(served, count), bs=count, num_workers=0)
    (batch,) = test_dl.one_batch()[:1]
    return batch.as_subclass(torch.Tensor).contiguous()


def load_package(served: ServedLearner, folder: Path, max_batch: int) -> CompileReport:
    """Put the archive's package in the Learner's place and warm it, or, on a machine of another kind or any
    failure, leave the Learner eager and say why. Never compiles."""
    from ..engine.predict import predict_images

    began = time.perf_counter()
    here = this_machine(served.device, served.precision)
    try:
        built_for = MachineKind(**json.loads((folder / BUILT_FOR_FILE).read_text()))
    except (OSError, ValueError, TypeError) as error:
        return _eager(served, f"the archive's {BUILT_FOR_FILE} cannot be read ({error})", None, here)
    mismatch = here.mismatch(built_for)
    if mismatch:
        return _eager(served, f"the package was built for another machine: {mismatch}", built_for, here)
    eager = served.learn.model
    try:
        package = open_package(folder / PACKAGE_FILE)
        _, tail = split_fastai_cast(eager)  # the package holds the rest
        served.learn.model = AotModel(eager, package, max_batch, tail)
        warm_up = sample_image(served.learn)
        for size in (1, max_batch):  # the first run of a size allocates its buffers: never on a request
            predict_images(served, [warm_up] * size, max_batch)
    except Exception as error:  # a damaged or foreign package: the model must stay served
        served.learn.model = eager
        return _eager(served, f"the package does not load here ({type(error).__name__}: {error})", built_for, here)
    seconds = time.perf_counter() - began
    logger.info("fastai-serving loaded the AOT package and warmed it in %.2f s (no compile)", seconds)
    return CompileReport(
        compiled=True,
        seconds=seconds,
        batch_sizes=(1, max_batch),
        mode="aot",
        built_for=built_for.describe(),
        machine=here.describe(),
    )


def _eager(served: ServedLearner, reason: str, built_for: MachineKind | None, here: MachineKind) -> CompileReport:
    logger.warning("fastai-serving serves the model eager: %s; rebuild the archive on this kind of machine", reason)
    return CompileReport(
        compiled=False,
        error=reason,
        mode="eager",
        built_for=built_for.describe() if built_for else {},
        machine=here.describe(),
    )
