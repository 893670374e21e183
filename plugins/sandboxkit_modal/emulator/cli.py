"""``sandboxkit-modal-emulator``: serve the emulator on 127.0.0.1 until interrupted.

On start it prints the environment variables that point the ``modal`` SDK at it, one
``NAME=value`` per line, then an empty line, and flushes standard output; everything else it has
to say goes to standard error. Typical use::

    sandboxkit-modal-emulator > /tmp/modal-env &     # or read the lines from a pipe
    set -a; . /tmp/modal-env; set +a                  # once the empty line has been printed
    python my_modal_program.py

Sandboxes run in hardened Docker containers when a Docker engine with the image answers
(``--sandboxes auto``, the default), else as local processes; it says which on standard error.
It stops on SIGINT or SIGTERM, killing every sandbox process (and container) it started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Sequence

from .server import EmulatorServer, served_rpcs
from .runtimes import SANDBOX_MODES
from .state import EmulatorConfig

__all__ = ["main", "parse_args"]


def _secret(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    key, sep2, value = rest.partition("=")
    if not (sep and sep2 and name and key):
        raise argparse.ArgumentTypeError(f"expected NAME=KEY=VALUE, got {text!r}")
    return name, key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sandboxkit-modal-emulator",
        description=(
            "Serve a local emulator of the parts of Modal's API that sandboxkit's modal backend uses, "
            "so the unmodified modal SDK runs against it. Sandboxes run in hardened Docker containers "
            "when an engine is available (network blocking and limits enforced), else as local "
            "processes (no isolation)."
        ),
    )
    defaults = EmulatorConfig()
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--token-id", default=None, help="the token id to accept (default: random)")
    parser.add_argument("--token-secret", default=None, help="the token secret to accept (default: random)")
    parser.add_argument(
        "--python", default=defaults.python, help="the Python that `python`/`python3` mean in a sandbox"
    )
    parser.add_argument("--root", default=None, help="directory for sandbox directories (default: a temporary one)")
    parser.add_argument(
        "--secret",
        action="append",
        type=_secret,
        default=[],
        metavar="NAME=KEY=VALUE",
        help="create a named secret (repeat for more keys or secrets)",
    )
    parser.add_argument(
        "--sandboxes",
        choices=SANDBOX_MODES,
        default="auto",
        help="where sandboxes run: Docker containers, local processes, or containers when a Docker "
        "engine with the image answers (default: auto)",
    )
    parser.add_argument(
        "--docker-image",
        default=None,
        help="image of container mode, with python3 (default: $SANDBOXKIT_DOCKER_IMAGE, else the docker "
        "backend's default)",
    )
    parser.add_argument("--record-dir", default=None, help="write each sandbox's create request there as JSON")
    parser.add_argument("--token-ttl", type=float, default=defaults.token_ttl, help="lifetime of minted tokens (s)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v: sandboxes, -vv: every RPC)")
    parser.add_argument("--list-rpcs", action="store_true", help="print the RPCs the emulator serves and exit")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    secrets: dict[str, dict[str, str]] = {}
    for name, key, value in args.secret:
        secrets.setdefault(name, {})[key] = value
    config = EmulatorConfig(
        port=args.port, python=args.python, root=args.root, token_ttl=args.token_ttl, secrets=secrets,
        sandboxes=args.sandboxes, docker_image=args.docker_image,
    )
    if args.token_id:
        config.token_id = args.token_id
    if args.token_secret:
        config.token_secret = args.token_secret
    return config


async def _serve(server: EmulatorServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        for name, value in server.environment().items():
            sys.stdout.write(f"{name}={value}\n")
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(
            f"sandboxkit's Modal emulator serving on {server.url}; {server.state.sandbox_note}. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator; returns the exit status."""
    args = parse_args(argv)
    if args.list_rpcs:
        for service, names in served_rpcs().items():
            for name in names:
                print(f"{service}/{name}")
        return 0
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("sandboxkit_modal.emulator").setLevel(level)
    try:
        server = EmulatorServer(config_from_args(args), record_dir=args.record_dir)
    except ValueError as exc:
        print(f"sandboxkit-modal-emulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
