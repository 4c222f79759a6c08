"""Run one of serve's children so that it ends with serve, however serve ends (SIGKILL and the OOM killer too).

`python -m fastai_serving_scripts.guard PARENT_PID COMMAND...` leads a process group of its own
(serve starts it in a new session) and runs COMMAND in that group. serve stops the group as
always (SIGTERM to the group, then SIGKILL), and the guard just passes on COMMAND's exit code.
When serve itself dies without stopping it, the kernel tells the guard (Linux's parent-death
signal), and the guard stops the whole group: SIGTERM, then SIGKILL after a grace. No
TorchServe, Java worker or front is left holding a port after its serve is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from fastai_serving import defaults

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DIED = signal.SIGUSR2  # the signal the kernel sends the guard when serve dies


def on_parent_death(signum: int) -> bool:
    """Ask the kernel to send `signum` when the parent dies (Linux); False where that cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stop_group(grace_s: float) -> None:
    """SIGTERM to every process of this group but the guard, then SIGKILL to what is left after `grace_s`."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _others_in_group():
        time.sleep(0.2)
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the guard goes too


def _others_in_group() -> bool:
    group, me = os.getpgrp(), os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.getpgid(int(entry)) == group:
                    return True
            except ProcessLookupError:
                continue
    return False


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    watched = on_parent_death(PARENT_DIED)
    signal.signal(PARENT_DIED, lambda *_: stop_group(defaults.TORCHSERVE_STOP_S))
    if watched and os.getppid() != parent:  # serve died before the kernel was asked to tell us
        stop_group(defaults.TORCHSERVE_STOP_S)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # serve's SIGTERM to the group is for COMMAND
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(command, preexec_fn=_default_stop_signals)
    while True:
        try:
            return child.wait()
        except InterruptedError:
            continue


def _default_stop_signals() -> None:
    """In COMMAND, before it runs: SIGTERM and SIGINT do what they always do (an ignored signal would stay ignored)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
