"""The socket channel: the driver's stdin and stdout over a Unix socket instead of the engine's relay.

Over ``docker attach`` every message crosses the engine twice (client socket, daemon, shim,
container pipe), which costs more than the whole round trip on a local pipe. When the engine runs
on this machine, the host instead listens on a Unix socket in a private directory that is
bind-mounted, read-only, into the container; a few lines of stdlib code (:data:`SHIM`) connect to
it at start-up, put the connection on file descriptors 0 and 1 and run the driver command
unchanged. The container's stderr still travels over the attach stream.

The directory holds nothing but that socket and exists only until the driver connects: the host
then removes it (the container keeps an empty, read-only mount). If the sandbox cannot connect
(a remote or virtualised engine, SELinux labels, ...), the shim says why on stderr, writes
:data:`FALLBACK_MARKER` on stdout and the session carries on over the attach stream.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import tempfile
import time
from typing import Callable

__all__ = ["CONTAINER_DIR", "ENV_NAME", "FALLBACK_MARKER", "SHIM", "ChannelListener", "remove_stale_dirs"]

#: Where the channel directory appears inside the container.
CONTAINER_DIR = "/run/sandboxkit"
#: The environment variable that tells the shim where the socket is (removed before the driver runs).
ENV_NAME = "SANDBOXKIT_CHANNEL"
#: What the shim writes on stdout when it falls back to the attach stream.
FALLBACK_MARKER = b"\n"
_DIR_PREFIX = "sandboxkit-channel-"
_SOCKET_NAME = "driver.sock"

#: Run as ``python3 -I -c SHIM ARGV...``, where ARGV is the driver command without ``python3``.
#: Python 3.8+, stdlib only. A ``-I -c CODE`` command runs in this same interpreter (no second
#: start-up); anything else is exec'd.
SHIM = (
    "import os,socket,sys\n"
    f"p=os.environ.pop({ENV_NAME!r},'')\n"
    "try:\n"
    " s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM);s.connect(p)\n"
    " os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);s.close()\n"
    "except OSError as e:\n"
    " os.write(2,('sandboxkit: no socket channel (%s); using the attach stream\\n'%e).encode())\n"
    " os.environ['SANDBOXKIT_SPIN_SECONDS']='0'\n"
    f" os.write(1,{FALLBACK_MARKER!r})\n"
    "a=sys.argv[1:]\n"
    "if a[:2]==['-I','-c']:\n"
    " sys.argv=['-c']+a[3:]\n"
    " exec(compile(a[2],'<string>','exec'),{'__name__':'__main__','__builtins__':__builtins__})\n"
    "else:\n"
    " os.execvp('python3',['python3']+a)\n"
)


class ChannelListener:
    """A listening Unix socket in a fresh private directory, for one container.

    The directory's parent is private to this user (mode 0700); the mounted directory itself can
    only be searched (0711) and the socket can be connected to by any uid (0666), so the
    container's user, whatever it maps to, can reach it and no other host user can.
    """

    def __init__(self) -> None:
        self._root = tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-")
        self.host_dir = os.path.join(self._root, "mnt")
        self._path = os.path.join(self.host_dir, _SOCKET_NAME)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.mkdir(self.host_dir, 0o711)
            os.chmod(self.host_dir, 0o711)  # whatever the umask
            self._listener.bind(self._path)
            os.chmod(self._path, 0o666)
            self._listener.listen(1)
        except OSError:
            self.close()
            raise

    @property
    def container_path(self) -> str:
        return f"{CONTAINER_DIR}/{_SOCKET_NAME}"

    def accept(
        self, attach: socket.socket, split_output: Callable[[bytes], bytes], timeout: float
    ) -> socket.socket | str:
        """Wait for the driver's connection. Returns it, or "fallback" if the sandbox fell back to
        the attach stream (its marker arrived), or "ended" if the attach stream ended first.
        Other output read from ``attach`` meanwhile goes through ``split_output``. Raises
        :class:`TimeoutError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:  # no FD_SETSIZE limit, unlike select()
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(attach, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the sandbox neither connected nor fell back within {timeout:g}s")
                ready = {key.fileobj for key, _ in selector.select(left)}
                if self._listener in ready:
                    connection, _ = self._listener.accept()
                    connection.setblocking(True)
                    return connection
                if attach in ready:
                    chunk = attach.recv(1 << 16)
                    if not chunk:
                        split_output(chunk)
                        return "ended"
                    if split_output(chunk):
                        return "fallback"

    def close(self) -> None:
        """Stop listening and remove the directory (an established connection is unaffected)."""
        try:
            self._listener.close()
        except OSError:
            pass
        shutil.rmtree(self._root, ignore_errors=True)


def remove_stale_dirs(dry_run: bool) -> list[str]:
    """Channel directories left by a host process that died while its sandbox was starting."""
    removed = []
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(_DIR_PREFIX):
            continue
        pid_text = name[len(_DIR_PREFIX):].partition("-")[0]
        path = os.path.join(base, name)
        try:
            mine = os.lstat(path).st_uid == os.getuid()
        except OSError:
            continue
        if not mine or not pid_text.isdigit() or _running(int(pid_text)) or not os.path.isdir(path):
            continue
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            if os.path.exists(path):
                removed.append(f"error: could not remove socket channel directory {path}")
                continue
        removed.append(f"socket channel directory {path} of pid {pid_text}")
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: running
    return True
