"""Finding backends: pluggy over the ``sandboxkit`` entry-point group, loading only what is asked.

Each entry point's name is a backend name. Selecting one backend loads that plugin alone, so
choosing ``subprocess`` never imports Docker's or Modal's SDK. ``SANDBOXKIT_DISABLE_PLUGINS``
(comma-separated names) blocks plugins before they load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from sandboxkit import hookspecs
from sandboxkit.backend import Availability, Backend
from sandboxkit.errors import BackendNotFoundError

__all__ = ["BackendInfo", "DISABLE_ENV", "ENTRY_POINT_GROUP", "collect_garbage", "describe_backends", "load_backend"]

ENTRY_POINT_GROUP = hookspecs.NAME
DISABLE_ENV = "SANDBOXKIT_DISABLE_PLUGINS"


@dataclass(frozen=True)
class BackendInfo:
    """One installed backend as ``sandboxkit.backends()`` reports it."""

    name: str
    distribution: str
    version: str
    usable: bool
    reason: str = ""
    hint: str = ""
    description: str = ""


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def installed_names() -> list[str]:
    """Names of the installed backends that are not disabled."""
    disabled = _disabled()
    return sorted(name for name in _entry_points() if name not in disabled)


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.NAME)
    pm.add_hookspecs(hookspecs)
    for name in _disabled():
        pm.set_blocked(name)
    return pm


def _not_found(name: str) -> BackendNotFoundError:
    available = installed_names()
    listing = ", ".join(available) or "none"
    if name in _disabled():
        message = f"backend {name!r} is disabled by {DISABLE_ENV}; installed backends: {listing}"
    else:
        message = (
            f"no backend named {name!r}; installed backends: {listing}. "
            f"Install a backend plugin (e.g. pip install 'sandboxkit[docker]') or check the spelling."
        )
    return BackendNotFoundError(message, name, available)


def load_backend(name: str) -> type[Backend]:
    """Load the plugin registered under entry point ``name`` (and nothing else); return its backend.

    Raises :class:`BackendNotFoundError` for an unknown or disabled name, and pluggy's
    ``PluginValidationError`` when the plugin implements a hook that does not exist.
    """
    if name in _disabled() or name not in _entry_points():
        raise _not_found(name)
    pm = _plugin_manager()
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    pm.check_pending()
    registered: list[type] = []
    pm.hook.sandboxkit_register_backends(register=registered.append)
    for backend in registered:
        if not (isinstance(backend, type) and issubclass(backend, Backend)):
            raise TypeError(f"plugin {name!r} registered {backend!r}, which is not a sandboxkit.Backend subclass")
    matching = [backend for backend in registered if backend.name == name]
    if not matching:
        names = ", ".join(repr(b.name) for b in registered) or "nothing"
        raise TypeError(
            f"plugin {name!r} registered {names}; its entry-point name must match the registered backend's name"
        )
    return matching[0]


def describe_backends() -> list[BackendInfo]:
    """Load each installed, enabled backend in turn and report whether it is usable now."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        if name in _disabled():
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        try:
            backend = load_backend(name)
            availability = backend.check()
            description = backend.description
        except Exception as exc:  # a broken plugin is reported, not fatal to the listing
            availability = Availability.unusable(f"plugin failed to load: {type(exc).__name__}: {exc}")
            description = ""
        infos.append(
            BackendInfo(
                name=name,
                distribution=dist_name,
                version=version,
                usable=availability.usable,
                reason=availability.reason,
                hint=availability.hint,
                description=description,
            )
        )
    return infos


def collect_garbage(names: list[str] | None = None, dry_run: bool = False) -> dict[str, list[str]]:
    """Run each enabled plugin's ``sandboxkit_gc`` hook (or only those in ``names``).

    Returns what each plugin removed (or would remove), by plugin name; a plugin that fails
    reports its error as its only line.
    """
    results: dict[str, list[str]] = {}
    for name in names or installed_names():
        if name in _disabled() or name not in _entry_points():
            raise _not_found(name)
        pm = _plugin_manager()
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        pm.check_pending()
        try:
            found = [line for lines in pm.hook.sandboxkit_gc(dry_run=dry_run) for line in lines]
        except Exception as exc:
            found = [f"error: {type(exc).__name__}: {exc}"]
        results[name] = found
    return results
