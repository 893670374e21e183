"""A local emulator of the parts of Modal's API that sandboxkit's ``modal`` backend uses.

It is a grpclib server on 127.0.0.1, built on ``modal_proto``'s server base classes, serving
Modal's control plane (``ModalClient``) and task command router (``TaskCommandRouter``) on one
port, so the unmodified ``modal`` SDK (tested: 1.6.x) runs end to end without a Modal account:
apps, secrets and images are kept in memory, and each sandbox is a private directory in which
every exec (and the entrypoint, if any) runs as a local process.

It is for tests and offline development, **not a sandbox**: processes run as the emulator's
user, network blocking and cpu/memory limits are recorded but not enforced, and images are not
built (``python``/``python3`` run the configured host Python; ``pip_install`` and other layers
have no effect). A process sees only the environment the SDK asked for, plus a minimal ``PATH``.

Use it from a shell with the ``sandboxkit-modal-emulator`` command, from asyncio with
:class:`EmulatorServer`, from synchronous code with :class:`EmulatorThread`, or from pytest with
the fixtures in :mod:`sandboxkit_modal.emulator.testing`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorThread", "served_rpcs"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (e.g. for its pytest fixtures) needs neither grpclib nor modal_proto.
    if name == "EmulatorConfig":
        from .state import EmulatorConfig

        return EmulatorConfig
    if name in ("EmulatorServer", "EmulatorThread", "served_rpcs"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
