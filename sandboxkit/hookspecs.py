"""The hooks a sandboxkit plugin may implement. Every hook name carries the ``sandboxkit_`` prefix."""

from __future__ import annotations

from typing import Callable

import pluggy

NAME = "sandboxkit"

hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


@hookspec
def sandboxkit_register_backends(register: Callable[[type], None]) -> None:
    """Register the backends this plugin provides.

    :param register: call it once per :class:`sandboxkit.Backend` subclass. A plugin loaded
        through the entry point ``NAME`` must register a backend whose ``name`` is ``NAME``.
    """


@hookspec
def sandboxkit_gc(dry_run: bool) -> list[str]:
    """Remove this backend's sandboxes whose owning host process is provably gone.

    :param dry_run: only report what would be removed.
    :return: one line per sandbox removed (or that would be), naming it.
    Leave every sandbox alone whose owner may still be alive (see ``sandboxkit.ownership``).
    """
