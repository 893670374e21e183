"""Who owns a sandbox: labels naming this host process, and the test that its owner is gone.

Backends that create remote or long-lived resources (containers, cloud sandboxes) attach
:func:`owner_labels` to each and let ``sandboxkit gc`` remove those whose owner
:func:`owner_is_gone` says is provably dead. A reused pid is never mistaken for the owner: the
labels carry the process's start time, the machine's boot id and the pid namespace.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache
from typing import Mapping

__all__ = ["BOOT", "HOST", "LABEL_PREFIX", "MARKER", "PID", "PID_NAMESPACE", "SESSION", "STARTED",
           "owner_is_gone", "owner_labels", "process_start_time"]

LABEL_PREFIX = "sandboxkit."
MARKER = LABEL_PREFIX + "managed"
HOST = LABEL_PREFIX + "host"
BOOT = LABEL_PREFIX + "boot-id"
PID = LABEL_PREFIX + "pid"
STARTED = LABEL_PREFIX + "pid-start"
SESSION = LABEL_PREFIX + "session"
PID_NAMESPACE = LABEL_PREFIX + "pid-ns"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), "" when it cannot be read, or
    None when no such process runs (a zombie has ended: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces or parentheses: split after its closing ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@lru_cache(maxsize=1)
def _this_process() -> tuple[str, str, str, str, str]:
    pid = os.getpid()
    return socket.gethostname(), _boot_id(), str(pid), process_start_time(pid) or "", _pid_namespace()


def owner_labels(session: str | None = None) -> dict[str, str]:
    """Labels identifying sandboxkit, this host, this process (with its start time) and a session."""
    host, boot, pid, started, pid_ns = _this_process()
    if pid != str(os.getpid()):  # forked since the cache was filled
        _this_process.cache_clear()
        host, boot, pid, started, pid_ns = _this_process()
    return {
        MARKER: "true",
        HOST: host,
        BOOT: boot,
        PID: pid,
        STARTED: started,
        PID_NAMESPACE: pid_ns,
        SESSION: session or uuid.uuid4().hex,
    }


def owner_is_gone(labels: Mapping[str, str]) -> bool:
    """True only when the owner is provably dead: it ran on this host, in this boot and in this pid
    namespace, and its pid is not running or now belongs to a process started at another time.
    Anything unsure (another host, boot or namespace, missing labels) is left alone."""
    host, boot, _, _, pid_ns = _this_process()
    if labels.get(MARKER) != "true" or labels.get(HOST) != host:
        return False
    if not boot or labels.get(BOOT) != boot or labels.get(PID_NAMESPACE, "") != pid_ns:
        return False
    try:
        pid = int(labels.get(PID, ""))
    except ValueError:
        return False
    started = process_start_time(pid)
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
