"""Where the images come from, each under a key: a folder, a list of paths or URLs, or chip-n-scale's tile list.

A source gives its keys in a stable order (a folder's sorted relative paths, a list's lines) and
says where each key's bytes are (`locate`: a local path or an http(s) URL). `select` drops repeated
keys and takes one shard, so N processes given the same list split it with no coordinator.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .tiles import check_template, parse_tile, tile_url

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif")
_SHARD = re.compile(r"^(\d+)/(\d+)$")


class Source(Protocol):
    noun: str  # what a key names, for messages: "images", "tiles", "lines"

    def keys(self) -> Iterator[str]:
        """Every key in the source's order (repeats allowed: `select` drops them)."""

    def locate(self, key: str) -> str:
        """The key's local path or http(s) URL; ValueError when the key names nothing readable (a bad tile line)."""

    def describe(self) -> str:
        """The source, for the first line a person reads."""


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def clean_key(key: str) -> bool:
    """Keys go on one line of the outputs: a key with a line break in it cannot be one."""
    return "\n" not in key and "\r" not in key


@dataclass
class FolderSource:
    """Every image under a folder, recursively (hidden folders left out); key = its path relative to the folder."""

    root: Path
    noun: str = "images"
    ignored: int = 0  # files that are not images by their suffix, or whose names hold a line break

    def keys(self) -> Iterator[str]:
        found, self.ignored = [], 0
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in files:
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if name.lower().endswith(IMAGE_SUFFIXES) and clean_key(key):
                    found.append(key)
                else:
                    self.ignored += 1
        return iter(sorted(found))

    def locate(self, key: str) -> str:
        return str(self.root / key)

    def describe(self) -> str:
        ignored = f" ({self.ignored} other files ignored)" if self.ignored else ""
        return f"folder {self.root}{ignored}"


@dataclass
class ListSource:
    """A text file of image paths or http(s) URLs, one a line (blank lines skipped); key = the line.

    Relative paths are read from the list's own folder, so the list works from any working directory.
    """

    path: Path
    noun: str = "lines"

    def keys(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield line.strip()

    def locate(self, key: str) -> str:
        if is_url(key):
            return key
        path = Path(key).expanduser()
        return str(path if path.is_absolute() else self.path.parent / path)

    def describe(self) -> str:
        return f"list {self.path}"


@dataclass
class TileSource:
    """chip-n-scale's inputs: a file of `x-y-z` lines and an XYZ imagery template; key = `x-y-z`."""

    path: Path
    template: str
    noun: str = "tiles"

    def __post_init__(self) -> None:
        check_template(self.template)

    def keys(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    yield parse_tile(line).key
                except ValueError:
                    yield line.strip()  # kept as its own key, so it is reported as failed, not dropped

    def locate(self, key: str) -> str:
        return tile_url(self.template, parse_tile(key))

    def describe(self) -> str:
        return f"{self.path} with imagery {self.template}"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`K/N`: this process takes keys K, K+N, K+2N, ... (counting from 0, as a Kubernetes Indexed Job's index)."""
    match = _SHARD.match(text.strip())
    if not match:
        raise ValueError(f"--shard takes K/N, such as 0/4, not {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--shard {text}: K counts from 0 and must be below N")
    return Shard(index, count)


def select(keys: Iterable[str], shard: Shard = Shard()) -> list[str]:
    """The shard's keys, each once, in order: every N-th distinct key, starting at the K-th."""
    seen: set[str] = set()
    chosen = []
    for key in keys:
        if key in seen:
            continue
        if len(seen) % shard.count == shard.index:
            chosen.append(key)
        seen.add(key)
    return chosen


def shard_keys(keys: Iterable[str], shard: Shard = Shard()) -> Iterator[str]:
    """The shard's keys of a source whose keys never repeat (an area, a scene), streamed: every N-th from the K-th."""
    for index, key in enumerate(keys):
        if index % shard.count == shard.index:
            yield key


def shard_count(total: int, shard: Shard = Shard()) -> int:
    """How many of `total` distinct keys `shard_keys` gives."""
    return max(0, (total - shard.index + shard.count - 1) // shard.count)
