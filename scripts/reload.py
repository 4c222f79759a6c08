"""Swap a served model to a new archive version with no failed request, through TorchServe's management API.

1. register the new archive as a new version beside the old (it brings its own batching and
   worker settings, from its model config);
2. wait until the new version has ready workers: if it never does, unregister it and stop
   (the old version kept serving throughout);
3. make the new version the default: new requests go to it;
4. let requests already sent to the old version finish, then retire it (unregister, and move
   its archive into the store's hidden `.retired/`, which TorchServe never loads, so a restart
   serves the new one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from fastai_serving import defaults
from fastai_serving.contract.errors import NotFound, ServingError
from fastai_serving_scripts.archives import NotAnArchive, archive_identity
from fastai_serving_scripts.serve import state_file
from fastai_serving_shim.torchserve import Management


def parse_args(argv: list[str] | None = None, prog: str = "reload") -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


def build_parser(prog: str = "reload") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--name", required=True, help="the model to swap")
    add("--archive", required=True, type=Path, help="the new version's .mar (make-archive --version V)")
    add("--model-store", type=Path, help="the server's model store (default: the one scripts/serve serves)")
    add("--management", default=f"http://{defaults.LOOPBACK}:{defaults.MANAGEMENT_PORT}",
        help="TorchServe's management API (default: %(default)s)")  # fmt: skip
    add(
        "--ready-timeout",
        type=float,
        default=defaults.RELOAD_READY_TIMEOUT_S,
        help="seconds the new version may take to get a ready worker (default: %(default)s)",
    )
    add("--drain", type=float, default=defaults.RELOAD_DRAIN_S,
        help="seconds requests already sent to the old version get to finish (default: %(default)s)")  # fmt: skip
    add("--keep-old", action="store_true", help="keep the old version registered (not the default any more)")
    return parser


class ReloadError(RuntimeError):
    pass


def served_model_store(management: str) -> Path | None:
    """The model store of the scripts/serve whose TorchServe has this management API, if one runs here."""
    port = urlsplit(management).port or defaults.MANAGEMENT_PORT
    try:
        state = json.loads(state_file(port).read_text())
        os.kill(int(state["pid"]), 0)
        return Path(state["model_store"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_store_for(requested: Path | None, management: str) -> Path:
    """The folder reload copies the new archive into: it must be the one the server serves."""
    served = served_model_store(management)
    if requested is None:
        if served is None:
            raise ReloadError(
                f"cannot tell which model store the server at {management} serves (no scripts/serve on this machine "
                "says so): pass --model-store, the folder it was started with"
            )
        return served
    if served is not None and requested.resolve() != served.resolve():
        raise ReloadError(f"the server at {management} serves the model store {served}, not {requested}")
    if not requested.is_dir():
        raise ReloadError(f"--model-store {requested} is not a folder")
    return requested


def reload(args: argparse.Namespace, say=print) -> None:
    try:
        name, new_version = archive_identity(args.archive)
    except NotAnArchive as error:
        raise ReloadError(str(error)) from None
    if name != args.name:
        raise ReloadError(f"{args.archive} holds model {name!r}, not {args.name!r}")
    management = Management(args.management, timeout_s=defaults.MANAGEMENT_TIMEOUT_S)
    try:
        swap(args, management, name, new_version, say)
    except ServingError as error:
        raise ReloadError(f"TorchServe's management API at {args.management}: {error.message}") from None


def swap(args: argparse.Namespace, management: Management, name: str, new_version: str, say) -> None:
    """Register the new version beside the old, wait for its worker, make it the default, retire the old."""
    model_store = model_store_for(args.model_store, args.management)
    try:
        registered = {v.version for v in management.versions(name)}
    except NotFound:
        raise ReloadError(f"model {name!r} is not registered; nothing to reload (serve it first)") from None
    old = management.default_version(name)
    old_version = old.version
    if new_version in registered:
        raise ReloadError(f"{name} version {new_version} is already registered: make the archive with a new --version")
    old_archive = old.archive

    target = model_store / f"{name}-v{new_version}.mar"
    if args.archive.resolve() != target.resolve():
        shutil.copy2(args.archive, target)
    say(f"reload: registering {name} {new_version} beside {old_version}")
    try:
        management.register(target.name, synchronous="false")
    except ServingError as error:
        target.unlink(missing_ok=True)
        raise ReloadError(f"TorchServe refused {target.name}: {error.message}; {old_version} keeps serving") from None

    deadline = time.monotonic() + args.ready_timeout
    while not management.ready(name, new_version):
        if time.monotonic() > deadline:
            management.unregister(name, new_version)
            target.unlink(missing_ok=True)
            raise ReloadError(
                f"{name} {new_version} had no ready worker after {args.ready_timeout:.0f} s (its worker fails to load: "
                f"see model_log.log); unregistered it, and {old_version} keeps serving"
            )
        time.sleep(1)

    try:
        management.set_default(name, new_version)
    except ServingError as error:
        raise ReloadError(f"could not make {new_version} the default: {error.message}") from None
    say(f"reload: {name} {new_version} is ready and now the default")
    if args.keep_old:
        return
    time.sleep(args.drain)
    try:
        management.unregister(name, old_version)
    except ServingError as error:
        raise ReloadError(f"{new_version} serves, but retiring {old_version} failed: {error.message}") from None
    _retire_archive(model_store, old_archive)
    say(f"reload: retired {name} {old_version}")


RETIRED = ".retired"  # in the model store: TorchServe loads every archive and folder there but hidden ones


def _retire_archive(model_store: Path, archive_name: str) -> None:
    """Move the old archive where TorchServe never loads it, so that a restart serves only the new version."""
    archive = model_store / archive_name
    if archive_name and archive.is_file():
        retired = model_store / RETIRED
        retired.mkdir(exist_ok=True)
        archive.replace(retired / archive.name)


def main(argv: list[str] | None = None, prog: str = "reload") -> int:
    try:
        reload(parse_args(argv, prog))
    except ReloadError as error:
        print(f"reload: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
