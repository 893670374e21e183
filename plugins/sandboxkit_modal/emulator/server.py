"""One grpclib server on 127.0.0.1 serving the control plane and the task command router.

:class:`EmulatorServer` runs on the caller's event loop; :class:`EmulatorThread` runs one on a
loop of its own in a background thread, for synchronous code. Either way :meth:`environment` gives
the variables that point the ``modal`` SDK at the server:

``MODAL_SERVER_URL``
    ``http://127.0.0.1:PORT``. The SDK accepts the plain-HTTP task command router URL the emulator
    hands out only because the control plane is on loopback.
``MODAL_TOKEN_ID``, ``MODAL_TOKEN_SECRET``
    The only credentials the control plane accepts; any other pair fails with
    ``UNAUTHENTICATED`` (the SDK raises ``modal.exception.AuthError``).
``MODAL_CONFIG_PATH``
    A file that does not exist, so a user's ``~/.modal.toml`` cannot interfere.
``NO_PROXY``, ``MODAL_DISABLE_API_PROXY``
    Keep HTTP proxies out of the loopback connection.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import shutil
import socket
import tempfile
import threading
from typing import Mapping

from grpclib import GRPCError, Status
from grpclib.events import RecvRequest, listen
from grpclib.server import Server
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

from .command_router import CommandRouter
from .control_plane import ControlPlane
from .state import EmulatorConfig, EmulatorState
from .tokens import TokenError
from .unimplemented import implemented

__all__ = ["EmulatorServer", "EmulatorThread", "served_rpcs"]

log = logging.getLogger("sandboxkit_modal.emulator")

HOST = "127.0.0.1"
_CONTROL_PREFIX = "/modal.client.ModalClient/"


def served_rpcs() -> dict[str, list[str]]:
    """The RPCs the emulator implements, by service (all others are refused as unimplemented)."""
    return {
        "ModalClient": implemented(ControlPlane, ModalClientBase),
        "TaskCommandRouter": implemented(CommandRouter, TaskCommandRouterBase),
    }


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class EmulatorServer:
    """The emulator on one TCP port of 127.0.0.1; use as ``async with`` or call start/stop."""

    def __init__(self, config: EmulatorConfig | None = None, *, record_dir: str | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._own_root = self.config.root is None
        root = self.config.root or tempfile.mkdtemp(prefix="sandboxkit-modal-emulator-")
        self.state = EmulatorState(self.config, os.path.realpath(root))
        #: Where a JSON record of each created sandbox's request is written (None: nowhere).
        self.record_dir = record_dir
        self._server: Server | None = None
        self.port = 0
        #: How many times each RPC was called, by ``Service/Method`` (for tests and diagnostics).
        self.calls: collections.Counter[str] = collections.Counter()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, once started."""
        return self.state.url

    def environment(self) -> dict[str, str]:
        """The environment variables that point the ``modal`` SDK at this server, in print order."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.config.token_id,
            "MODAL_TOKEN_SECRET": self.config.token_secret,
            "MODAL_CONFIG_PATH": os.path.join(self.state.root, "no-modal-config.toml"),
            "NO_PROXY": "127.0.0.1,localhost",
            "MODAL_DISABLE_API_PROXY": "1",
        }

    async def _authenticate(self, event: RecvRequest) -> None:
        """Refuse a control-plane call without this server's credentials (before its handler runs)."""
        name = event.method_name
        log.debug("call %s", name)
        self.calls[name.rsplit(".", 1)[-1]] += 1
        if not name.startswith(_CONTROL_PREFIX):
            return  # the task command router checks its bearer tokens per request
        metadata = event.metadata
        if not (
            _same(metadata.get("x-modal-token-id"), self.config.token_id)
            and _same(metadata.get("x-modal-token-secret"), self.config.token_secret)
        ):
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "sandboxkit's Modal emulator: wrong or missing token; use the MODAL_TOKEN_ID and "
                "MODAL_TOKEN_SECRET the emulator printed",
            )
        auth_token = metadata.get("x-modal-auth-token")
        if auth_token:
            try:
                self.state.minter.verify(auth_token)
            except TokenError as exc:
                raise GRPCError(Status.UNAUTHENTICATED, f"invalid auth token: {exc}") from None

    async def start(self) -> None:
        """Listen on 127.0.0.1 (``config.port``, or a free port when 0)."""
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that name it, and without
        # it every small message waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self.config.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.state.url = f"http://{HOST}:{self.port}"
        server = Server([ControlPlane(self.state, self.record_dir), CommandRouter(self.state)])
        listen(server, RecvRequest, self._authenticate)
        await server.start(sock=sock)
        self._server = server
        log.info("sandboxkit's Modal emulator listening on %s", self.url)

    async def stop(self) -> None:
        """Terminate every sandbox, stop serving, and remove the directory the server made."""
        await self.state.sandboxes.shutdown()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._own_root:
            shutil.rmtree(self.state.root, ignore_errors=True)

    async def __aenter__(self) -> "EmulatorServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class EmulatorThread:
    """An :class:`EmulatorServer` on a background thread's event loop, for synchronous callers."""

    def __init__(self, config: EmulatorConfig | None = None, *, record_dir: str | None = None) -> None:
        self.server = EmulatorServer(config, record_dir=record_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandboxkit-modal-emulator", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def environment(self) -> Mapping[str, str]:
        return self.server.environment()

    def start(self, timeout: float = 30.0) -> "EmulatorThread":
        """Start the thread and return once the server listens."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (terminating its sandboxes) and the thread."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "EmulatorThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
