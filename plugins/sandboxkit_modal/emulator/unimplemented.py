"""Refuse every RPC a servicer does not implement, with an error that names the method.

``modal_proto``'s grpclib base classes declare one abstract coroutine per RPC. :func:`complete`
fills in each one the subclass left out with a handler that fails with gRPC ``UNIMPLEMENTED`` and
the message ``sandboxkit's Modal emulator does not implement <Service>/<Method>`` (the SDK raises
it as ``modal.exception.UnimplementedError``), and logs the call so a missing RPC is easy to spot.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Coroutine, TypeVar

from grpclib import GRPCError, Status

__all__ = ["complete", "implemented", "unimplemented_message"]

log = logging.getLogger("sandboxkit_modal.emulator")

T = TypeVar("T", bound=type)


def unimplemented_message(service: str, method: str) -> str:
    """The error text for a call of ``service``/``method``, which the emulator does not serve."""
    return f"sandboxkit's Modal emulator does not implement {service}/{method}"


def _refuse(service: str, method: str) -> Callable[[Any, Any], Coroutine[Any, Any, None]]:
    message = unimplemented_message(service, method)

    async def handler(self: Any, stream: Any) -> None:
        log.warning("refused a call: %s", message)
        raise GRPCError(Status.UNIMPLEMENTED, message)

    handler.__name__ = method
    handler.__qualname__ = f"{service}.{method}"
    handler.refused = True  # type: ignore[attr-defined]
    return handler


def complete(cls: T, service: str) -> T:
    """Give ``cls`` a refusing handler for each abstract RPC it lacks; returns ``cls``."""
    for method in sorted(getattr(cls, "__abstractmethods__", ())):
        setattr(cls, method, _refuse(service, method))
    cls.__abstractmethods__ = frozenset()
    return cls


def implemented(cls: type, base: type) -> list[str]:
    """The RPCs of ``base`` that ``cls`` really serves (not refused by :func:`complete`)."""
    names = []
    for method in sorted(getattr(base, "__abstractmethods__", ())):
        func = getattr(cls, method, None)
        if func is not None and not getattr(func, "refused", False):
            names.append(method)
    return names
