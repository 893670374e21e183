"""Who owns a sandbox: labels naming this host process, and the test that its owner is gone.

Backends that create remote or long-lived resources (containers, cloud sandboxes) attach
:func:`owner_labels` to each and let ``sandboxkit gc`` remove those whose owner
:func:`owner_is_gone` says is provably dead. A reused pid is never mistaken for the owner: the
labels carry the process's start time, and the machine's boot id.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache
from typing import Mapping

__all__ = ["LABEL_PREFIX", "owner_is_gone", "owner_labels"]

LABEL_PREFIX = "sandboxkit."
MARKER = LABEL_PREFIX + "managed"
HOST = LABEL_PREFIX + "host"
BOOT = LABEL_PREFIX + "boot-id"
PID = LABEL_PREFIX + "pid"
STARTED = LABEL_PREFIX + "pid-start"
SESSION = LABEL_PREFIX + "session"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces or parentheses: split after its closing ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


@lru_cache(maxsize=1)
def _this_process() -> tuple[str, str, str, str]:
    pid = os.getpid()
    return socket.gethostname(), _boot_id(), str(pid), _start_time(pid) or ""


def owner_labels(session: str | None = None) -> dict[str, str]:
    """Labels identifying sandboxkit, this host, this process (with its start time) and a session."""
    host, boot, pid, started = _this_process()
    if pid != str(os.getpid()):  # forked since the cache was filled
        _this_process.cache_clear()
        host, boot, pid, started = _this_process()
    return {
        MARKER: "true",
        HOST: host,
        BOOT: boot,
        PID: pid,
        STARTED: started,
        SESSION: session or uuid.uuid4().hex,
    }


def owner_is_gone(labels: Mapping[str, str]) -> bool:
    """True only when the owner is provably dead: same host and boot, and its pid is not running
    or now belongs to a process that started at another time. Anything unsure is left alone."""
    host, boot, _, _ = _this_process()
    if labels.get(MARKER) != "true" or labels.get(HOST) != host:
        return False
    if labels.get(BOOT) and boot and labels.get(BOOT) != boot:
        return True  # the machine rebooted since: every process of that boot is gone
    try:
        pid = int(labels.get(PID, ""))
    except ValueError:
        return False
    started = _start_time(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    recorded = labels.get(STARTED, "")
    return bool(started and recorded and started != recorded)
