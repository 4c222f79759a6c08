"""Who predict-batch says it is, and which server it trusts: an API key, a CA, a client certificate.

`--token-file` holds the server's API key (a file, so the key never shows in a process list or a
shell's history); it goes as `Authorization: Bearer <key>` (REST) or the `authorization` metadata
(gRPC), to the server only, never to an imagery server. `--ca` is the CA that signed the server's
certificate (default: the system's CAs); `--cert` and `--key` a client certificate, for servers that
require one (mTLS). REST speaks TLS to an https:// URL; gRPC to grpcs://host:port, or whenever
`--ca` or `--cert` is given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    token: str = ""  # the API key, read from --token-file
    ca: Path | None = None  # the CA file that signed the server's certificate
    cert: Path | None = None  # a client certificate (PEM) and its key, for mTLS
    key: Path | None = None

    @property
    def wants_tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def authorization(self) -> str | None:
        return f"Bearer {self.token}" if self.token else None


NO_CREDENTIALS = Credentials()


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help="a file holding the server's API key (sent as Authorization: Bearer, or gRPC metadata)")  # fmt: skip
    group.add_argument("--ca", type=Path, metavar="FILE",
                       help="the CA file that signed the server's TLS certificate (default: the system's CAs)")  # fmt: skip
    group.add_argument(
        "--cert", type=Path, metavar="FILE", help="a client certificate (PEM), for servers that require one"
    )
    group.add_argument("--key", type=Path, metavar="FILE", help="the client certificate's private key (PEM)")


def from_arguments(args: argparse.Namespace) -> Credentials:
    """The run's credentials; ValueError (a usage error) for a file that cannot be read or a lone --cert or --key."""
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together: the client certificate and its private key")
    for flag, path in (
        ("--token-file", args.token_file),
        ("--ca", args.ca),
        ("--cert", args.cert),
        ("--key", args.key),
    ):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    token = ""
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
        if not token or any(character.isspace() for character in token):
            raise ValueError(f"--token-file {args.token_file}: it must hold one key, with no space")
    return Credentials(token, args.ca, args.cert, args.key)
