"""`make examples`: the models the docs' examples call (docs/api.md, docs/v2.md), archived into a model store.

They are the test suite's small Learners (harness/learners.py), trained offline in seconds and barely: their
answers show the shapes, not a good model. Each goes into the store under the name the docs call it by; one
already there is kept. `python -m harness.examples [--store DIR] [--work DIR]`, from the checkout.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from harness import learners
from harness.servers import ROOT, archive_here

EXAMPLES: dict[str, Callable[[Path], Path]] = {  # the docs' model name: the Learner it is
    "tabular": learners.make_tabular_classifier,  # the quality class of a row (high, low, mid)
    "prices": learners.make_tabular_multi_regressor,  # a row's price and volume
    "collab": learners.make_collab,  # the rating a user gives an item
    "reviews": learners.make_text_classifier,  # a review's sentiment (neg, pos)
}


def build(store: Path, work: Path) -> list[str]:
    """Train and archive every example missing from `store` (exports under `work`); the names archived."""
    made = []
    for name, make in EXAMPLES.items():
        if (store / f"{name}.mar").exists():
            print(f"examples: {store / name}.mar exists", flush=True)
            continue
        archive_here(name, make(work / name), store)
        made.append(name)
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make examples", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store", help="default: model_store/")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "examples", help="default: build/examples/")
    args = parser.parse_args(argv)
    made = build(args.store, args.work)
    print(f"examples: {', '.join(EXAMPLES)} in {args.store} ({len(made)} made now)", flush=True)


if __name__ == "__main__":
    main()
