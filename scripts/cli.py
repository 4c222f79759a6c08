"""`fastai-serving`: the server's one command, its tools as subcommands.

`fastai-serving make-archive ...`, `fastai-serving serve ...` and `fastai-serving reload ...` are
scripts/make-archive, scripts/serve and scripts/reload, with the same flags (`--help` on each).
The batch client is a command of its own package: `predict-batch`.
"""

from __future__ import annotations

import importlib
import sys

# Each subcommand's module, imported only when it runs: serve's imports are not make-archive's.
COMMANDS = {
    "make-archive": ("fastai_serving_scripts.make_archive", "pack an exported Learner into a TorchServe archive"),
    "serve": ("fastai_serving_scripts.serve", "serve every archive in a model store (TorchServe, REST and gRPC)"),
    "reload": ("fastai_serving_scripts.reload", "swap a served model to a new archive version"),
}


def usage() -> str:
    lines = ["usage: fastai-serving <command> [options]   (fastai-serving <command> --help)", "", "commands:"]
    lines += [f"  {name:<14}{meaning}" for name, (_, meaning) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fastai-serving: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest, prog=f"fastai-serving {command}") or 0)  # --help and errors name it so


if __name__ == "__main__":
    sys.exit(main())
