"""Swap a served model to a new archive version with no failed request, through TorchServe's management API.

1. register the new archive as a new version beside the old (it brings its own batching and
   worker settings, from its model config);
2. wait until the new version has ready workers: if it never does, unregister it and stop
   (the old version kept serving throughout);
3. make the new version the default: new requests go to it;
4. let requests already sent to the old version finish, then retire it (unregister, and move
   its archive out of the model store so a restart serves the new one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import requests

from fastai_serving import defaults
from fastai_serving_scripts.serve import state_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reload", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--name", required=True, help="the model to swap")
    add("--archive", required=True, type=Path, help="the new version's .mar (make-archive --version V)")
    add("--model-store", type=Path, help="the server's model store (default: the one scripts/serve serves)")
    add("--management", default=f"http://{defaults.LOOPBACK}:{defaults.MANAGEMENT_PORT}",
        help="TorchServe's management API (default: %(default)s)")  # fmt: skip
    add("--ready-timeout", type=float, default=180, help="seconds the new version may take to get a ready worker")
    add("--drain", type=float, default=10, help="seconds requests already sent to the old version get to finish")
    add("--keep-old", action="store_true", help="keep the old version registered (not the default any more)")
    return parser.parse_args(argv)


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


def archive_identity(archive: Path) -> tuple[str, str]:
    """(model name, version) from the archive's manifest."""
    try:
        with zipfile.ZipFile(archive) as mar:
            model = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        return model["modelName"], model["modelVersion"]
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ReloadError(f"{archive} is not a model archive: {error}") from None


class Management:
    """The few TorchServe management calls a reload needs."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, method: str, path: str, timeout: float = 30, **params) -> requests.Response:
        try:
            return requests.request(method, f"{self.url}{path}", params=params or None, timeout=timeout)
        except requests.RequestException as error:
            raise ReloadError(f"TorchServe's management API at {self.url} is unreachable: {error}") from None

    def versions(self, name: str) -> list[dict]:
        response = self.call("GET", f"/models/{name}/all")
        if response.status_code == 404:
            raise ReloadError(f"model {name!r} is not registered; nothing to reload (serve it first)")
        response.raise_for_status()
        return response.json()

    def default_version(self, name: str) -> str:
        response = self.call("GET", f"/models/{name}")
        response.raise_for_status()
        return response.json()[0]["modelVersion"]

    def ready(self, name: str, version: str) -> bool:
        response = self.call("GET", f"/models/{name}/{version}")
        if response.status_code != 200:
            return False
        return any(w.get("status") == "READY" for v in response.json() for w in v.get("workers", []))


def reload(args: argparse.Namespace, say=print) -> None:
    name, new_version = archive_identity(args.archive)
    if name != args.name:
        raise ReloadError(f"{args.archive} holds model {name!r}, not {args.name!r}")
    management = Management(args.management)
    model_store = model_store_for(args.model_store, args.management)
    registered = {v["modelVersion"]: v for v in management.versions(name)}
    old_version = management.default_version(name)
    if new_version in registered:
        raise ReloadError(f"{name} version {new_version} is already registered: make the archive with a new --version")
    old_archive = registered[old_version].get("modelUrl", "")

    target = model_store / f"{name}-v{new_version}.mar"
    if args.archive.resolve() != target.resolve():
        shutil.copy2(args.archive, target)
    say(f"reload: registering {name} {new_version} beside {old_version}")
    response = management.call("POST", "/models", timeout=60, url=target.name, synchronous="false")
    if response.status_code not in (200, 202):
        target.unlink(missing_ok=True)
        raise ReloadError(f"TorchServe refused {target.name}: {_message(response)}; {old_version} keeps serving")

    deadline = time.monotonic() + args.ready_timeout
    while not management.ready(name, new_version):
        if time.monotonic() > deadline:
            management.call("DELETE", f"/models/{name}/{new_version}", timeout=60)
            target.unlink(missing_ok=True)
            raise ReloadError(
                f"{name} {new_version} had no ready worker after {args.ready_timeout:.0f} s (its worker fails to load: "
                f"see model_log.log); unregistered it, and {old_version} keeps serving"
            )
        time.sleep(1)

    response = management.call("PUT", f"/models/{name}/{new_version}/set-default")
    if response.status_code != 200:
        raise ReloadError(f"could not make {new_version} the default: {_message(response)}")
    say(f"reload: {name} {new_version} is ready and now the default")
    if args.keep_old:
        return
    time.sleep(args.drain)
    response = management.call("DELETE", f"/models/{name}/{old_version}", timeout=120)
    if response.status_code != 200:
        raise ReloadError(f"{new_version} serves, but retiring {old_version} failed: {_message(response)}")
    _retire_archive(model_store, old_archive)
    say(f"reload: retired {name} {old_version}")


def _retire_archive(model_store: Path, archive_name: str) -> None:
    """Move the old archive out of the store, so that a restart serves only the new version."""
    archive = model_store / archive_name
    if archive_name and archive.is_file():
        retired = model_store / "retired"
        retired.mkdir(exist_ok=True)
        archive.replace(retired / archive.name)


def _message(response: requests.Response) -> str:
    try:
        return response.json().get("message", response.text)
    except ValueError:
        return response.text or str(response.status_code)


def main(argv: list[str] | None = None) -> int:
    try:
        reload(parse_args(argv))
    except ReloadError as error:
        print(f"reload: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
