"""Stage one of the GPU check, run from the folder `make gpu-pack` fills: the engine-independent core in-process.

On an offline GPU machine with its own Python and torch (and no fastai, TorchServe or Java), after
`make gpu-check` has put the pack's wheels on the path, this prints one table:
- the near-free Learner's answers on the GPU against the CPU's (probabilities within 1e-3);
- the decode ceiling on the machine's cores, and the near-free model through the core's batch path, its
  images decoded on the CPU (PIL) and on the device (`--tensor-images`: torchvision's decode_jpeg, nvJPEG on a
  GPU, resized and normalized there), each with its CPU time per image, and the device path's answers
  against the CPU path's (within 1e-3);
- resnet34's forward ceiling in fp32 and bf16, and resnet34 through the core's batch path in bf16, decoding on
  the CPU and on the device (issue 31's target: the device path at least 0.8 of the bf16 ceiling at batch 64);
- the same archive compiled (torch.compile; CUDA graphs through "reduce-overhead"), through the core;
- resnet34 compiled ahead of time (make-archive --compile aot's package, built and loaded here) in fp32
  and bf16, through the core, against eager in the same precision.
Each row says why when it could not run; exits non-zero when the GPU's answers differ from the CPU's.
`--device cpu` runs the same rows on the CPU (a dry run of the script where no GPU is).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOLERANCE = 1e-3
PACK = Path(__file__).resolve().parent


def timed(rounds: int, work) -> float:
    """Seconds per round, the best of `rounds` after one warm-up round."""
    work()
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def decode_ceiling(tiles: list[bytes], size: int, threads: int) -> float:
    """Images per second: decode, resize and normalize into one batch tensor with plain PIL and numpy."""
    import numpy as np
    import torch
    from PIL import Image

    def one(tile: bytes):
        return np.asarray(Image.open(io.BytesIO(tile)).convert("RGB").resize((size, size), Image.BILINEAR))

    with ThreadPoolExecutor(threads) as pool:

        def batch() -> None:
            pixels = torch.from_numpy(np.stack(list(pool.map(one, tiles)))).permute(0, 3, 1, 2).float().div_(255)
            pixels.sub_(0.45).div_(0.225)

        return len(tiles) / timed(3, batch)


def through_core(served, tiles: list[bytes], rounds: int = 3, tensor_images: str = "off") -> tuple[float, float, list]:
    """Images per second through the core's own path (decode, the batch builder, the forward), the CPU time
    per image (µs, this process: every thread), and its answers. `tensor_images` "on": decoded on the device."""
    from fastai_serving.engine.predict import decode_for, predict_images
    from fastai_serving.engine.settings import HandlerSettings

    names = [f"instance {i}" for i in range(len(tiles))]
    settings = HandlerSettings(max_batch=64, tensor_images=tensor_images)
    answers: list = []
    cpu = [float("inf")]

    def run() -> None:
        began = time.process_time()
        answers[:] = predict_images(served, decode_for(served, tiles, names, settings), max_batch=64)
        cpu[0] = min(cpu[0], time.process_time() - began)

    per_s = len(tiles) / timed(rounds, run)
    return per_s, cpu[0] / len(tiles) * 1e6, [prediction.output for prediction in answers]


def forward_ceiling(model, device, batch: int, bf16: bool) -> float:
    import torch

    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    model = model.to(device).eval().to(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / timed(5, run)


def resnet34_learner(near_free_path: Path, out: Path) -> Path:
    """A resnet34 vision Learner (random weights: this measures speed) with the near-free Learner's pipeline."""
    from fastai.vision.all import load_learner as fastai_load
    from fastai.vision.all import resnet34, vision_learner

    learn = fastai_load(near_free_path)
    resnet = vision_learner(learn.dls, resnet34, pretrained=False, n_out=len(learn.dls.vocab))
    resnet.export(out)
    return out


def aot_rows(resnet_path: Path, device, tiles: list[bytes]) -> list[tuple[str, str, str]]:
    """resnet34's AOTInductor package (built as make-archive --compile aot builds it, checked against eager
    there), loaded as a worker loads it, through the core: fp32 and bf16, each against eager in its precision."""
    import tempfile

    from fastai_serving.compiled.aot import build_package, load_package
    from fastai_serving.engine.learner import load_learner

    rows = []
    for precision in ("fp32", "bf16"):
        label = f"resnet34 {precision} AOT package, through the core"
        try:
            served = load_learner(resnet_path, device, precision=precision)
            eager_per_s, _, _ = through_core(served, tiles)
            with tempfile.TemporaryDirectory(prefix="gpu-stage-one-aot-") as folder:
                built = build_package(served, 64, Path(folder))  # leaves the Learner's model eager
                if not built.compiled:
                    rows.append((label, "not built", built.error[:60]))
                    continue
                loaded = load_package(served, Path(folder), 64)
                if not loaded.compiled:
                    rows.append((label, "not loaded", loaded.error[:60]))
                    continue
                per_s, _, _ = through_core(served, tiles)
            rows.append((f"{label} (img/s)", f"{per_s:.0f}",
                         f"{per_s / eager_per_s:.2f} of eager {precision}'s; built in {built.seconds:.0f} s, "
                         f"loaded in {loaded.seconds:.1f} s"))  # fmt: skip
        except Exception as error:  # a row that cannot run says why; the others stand
            rows.append((label, "failed", f"{type(error).__name__}: {error}"[:60]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-stage-one", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled row")
    parser.add_argument("--no-aot", action="store_true", help="leave out the ahead-of-time compiled rows")
    args = parser.parse_args(argv)

    import os

    import torch

    from fastai_serving.compiled.worker import compile_learner
    from fastai_serving.engine.learner import load_learner

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-stage-one: torch sees no CUDA device here; pass --device cpu for a dry run")
        return 2
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"gpu-stage-one: torch {torch.__version__} on {name}")
    tiles = [path.read_bytes() for path in sorted((PACK / "tiles").glob("*.jpg"))]
    near_free = PACK / "near_free" / "export.pkl"
    rows: list[tuple[str, str, str]] = []
    worst = 0.0

    on_cpu = load_learner(near_free, "cpu")
    on_device = load_learner(near_free, device)
    _, _, expected = through_core(on_cpu, tiles, rounds=1)
    per_s, cpu_us, got = through_core(on_device, tiles)
    largest = largest_difference(got, expected)
    rows.append(("near-free model: largest difference from the CPU", f"{largest:.1e}", f"<= {TOLERANCE}"))
    ceiling = decode_ceiling(tiles, 224, os.cpu_count() or 1)
    rows.append(("decode ceiling, all cores (img/s)", f"{ceiling:.0f}", "1.00"))
    rows.append(("near-free model through the core, PIL on the CPU (img/s)", f"{per_s:.0f}",
                 f"{per_s / ceiling:.2f}; CPU {cpu_us:.0f} µs per image"))  # fmt: skip
    per_s, tensor_cpu_us, got = through_core(on_device, tiles, tensor_images="on")
    decoded_there = largest_difference(got, expected)
    worst = max(worst, decoded_there)
    rows.append(("near-free model, images decoded on the device: largest difference from the CPU path",
                 f"{decoded_there:.1e}", f"<= {TOLERANCE}"))  # fmt: skip
    rows.append(("near-free model through the core, images decoded on the device (img/s)", f"{per_s:.0f}",
                 f"{per_s / ceiling:.2f}; CPU {tensor_cpu_us:.0f} µs per image ({tensor_cpu_us / cpu_us:.2f} of PIL's)"))  # fmt: skip

    resnet_path = resnet34_learner(near_free, Path("/tmp") / "gpu-stage-one-resnet34.pkl")
    resnet = load_learner(resnet_path, device)
    fp32 = forward_ceiling(resnet.learn.model, device, 64, bf16=False)
    bf16 = forward_ceiling(resnet.learn.model, device, 64, bf16=True)
    rows.append(("resnet34 forward ceiling fp32, batch 64 (img/s)", f"{fp32:.0f}", "1.00"))
    rows.append(("resnet34 forward ceiling bf16, batch 64 (img/s)", f"{bf16:.0f}", f"{bf16 / fp32:.2f}"))
    served_bf16 = load_learner(resnet_path, device, precision="bf16")
    per_s, cpu_us, _ = through_core(served_bf16, tiles)
    rows.append(("resnet34 bf16 through the core, PIL on the CPU (img/s)", f"{per_s:.0f}",
                 f"{per_s / bf16:.2f} of bf16's; CPU {cpu_us:.0f} µs per image"))  # fmt: skip
    per_s, cpu_us, _ = through_core(served_bf16, tiles, tensor_images="on")
    rows.append(("resnet34 bf16 through the core, images decoded on the device (img/s)", f"{per_s:.0f}",
                 f"{per_s / bf16:.2f} of bf16's (wanted >= 0.8); CPU {cpu_us:.0f} µs per image"))  # fmt: skip
    if not args.no_compile:
        try:
            report = compile_learner(served_bf16, 64)
            if report.compiled:
                per_s, _, _ = through_core(served_bf16, tiles)
                rows.append(("resnet34 bf16 compiled, through the core (img/s)", f"{per_s:.0f}",
                             f"compiled in {report.seconds:.0f} s"))  # fmt: skip
            else:
                rows.append(("resnet34 bf16 compiled", "did not compile", report.error[:60]))
        except Exception as error:  # a row that cannot run says why; the others stand
            rows.append(("resnet34 bf16 compiled", "failed", f"{type(error).__name__}: {error}"[:60]))

    if not args.no_aot:
        rows += aot_rows(resnet_path, device, tiles)

    width = max(len(row[0]) for row in rows)
    print(f"{'row':<{width}}  {'value':>16}  ratio")
    for label, value, ratio in rows:
        print(f"{label:<{width}}  {value:>16}  {ratio}")
    worst = max(worst, largest)
    if worst > TOLERANCE:
        print(f"gpu-stage-one: FAILED: the answers on {name} differ from the CPU's by {worst:.1e}")
        return 1
    return 0


def largest_difference(got: list, expected: list) -> float:
    return max(float((a.cpu() - b.cpu()).abs().max()) for a, b in zip(got, expected, strict=True))


if __name__ == "__main__":
    sys.exit(main())
