"""The ``sandboxkit`` command line.

Subcommands:

* ``sandboxkit backends`` -- the installed backends and whether each can run here;
* ``sandboxkit run`` -- run a file, standard input or ``-c CODE`` in a sandbox;
* ``sandboxkit demo`` -- DSPy's RLM on two tasks, its code running in a sandbox;
* ``sandboxkit conformance`` -- the conformance kit against a backend;
* ``sandboxkit gc`` -- remove sandboxes left behind by host processes that are provably gone.

Exit codes are the same for every subcommand: 0 success, 1 the code (or a demo task) failed,
2 a usage or configuration error (unknown backend, bad option), 3 the sandbox itself failed.
DSPy is imported only by the subcommands that need it, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from importlib import metadata
from typing import Any, Sequence

__all__ = [
    "EXIT_CODE_ERROR",
    "EXIT_OK",
    "EXIT_SANDBOX_ERROR",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "parse_option_pairs",
]

EXIT_OK = 0
EXIT_CODE_ERROR = 1
EXIT_USAGE = 2
EXIT_SANDBOX_ERROR = 3
EXIT_INTERRUPTED = 130

_EXIT_CODES_TEXT = """\
exit codes:
  0  success
  1  the code raised an error or timed out (the message is printed to stderr)
  2  usage or configuration error (unknown backend, bad option value)
  3  the sandbox failed (could not start, died, or broke the protocol)
"""


class UsageError(Exception):
    """A problem with the command line or configuration; reported with exit code 2."""


def _version_text() -> str:
    from sandboxkit import __version__

    try:
        dspy_version = metadata.version("dspy")
    except metadata.PackageNotFoundError:
        dspy_version = "not installed"
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"sandboxkit {__version__} (DSPy {dspy_version}, Python {python})"


def parse_option_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    """Turn ``["key=value", ...]`` into a dict of strings; a later key replaces an earlier one.

    Values stay strings: sandboxkit converts each to the type its option declares. Raises
    :class:`UsageError` for an item without ``=`` or with an empty key.
    """
    options: dict[str, str] = {}
    for item in pairs or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"option {item!r} is not of the form key=value (e.g. -o timeout=30)")
        options[key] = value
    return options


def _error(message: str) -> None:
    print(f"sandboxkit: error: {message}", file=sys.stderr)


# -- backends ----------------------------------------------------------------------------------
def _cmd_backends(args: argparse.Namespace) -> int:
    from sandboxkit.api import backends

    infos = backends()
    if args.json:
        rows = [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "usable": info.usable,
                "reason": info.reason,
                "hint": info.hint,
                "description": info.description,
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not infos:
        print("No sandboxkit backends are installed (or all are disabled by SANDBOXKIT_DISABLE_PLUGINS).")
        return EXIT_OK
    header = ("BACKEND", "DISTRIBUTION", "USABLE", "DETAILS")
    rows_text = []
    for info in infos:
        if info.usable:
            details = info.description
        else:
            details = info.reason or "unusable"
            if info.hint:
                details += f" -- {info.hint}"
        rows_text.append((info.name, f"{info.distribution} {info.version}", "yes" if info.usable else "no", details))
    widths = [max(len(row[i]) for row in [header, *rows_text]) for i in range(3)]
    for row in [header, *rows_text]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return EXIT_OK


# -- run ---------------------------------------------------------------------------------------
def _read_source(args: argparse.Namespace) -> str:
    if args.code is not None:
        return args.code
    if args.file == "-":
        return sys.stdin.read()
    try:
        with open(args.file, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {args.file!r}: not UTF-8 text ({exc.reason})") from exc


def _make_interpreter(backend: str | None, options: dict[str, str]) -> Any:
    """An unstarted interpreter; configuration problems become :class:`UsageError`."""
    from sandboxkit.api import interpreter
    from sandboxkit.errors import CodeInterpreterError, SandboxkitError

    try:
        return interpreter(backend, **options)
    except SandboxkitError as exc:  # unknown backend, bad option
        raise UsageError(str(exc)) from exc
    except CodeInterpreterError:  # the backend cannot run here: a sandbox failure
        raise
    except Exception as exc:  # a plugin that fails to load is a configuration problem
        raise UsageError(f"cannot load backend {backend or '(default)'!r}: {type(exc).__name__}: {exc}") from exc


def _is_sandbox_failure(exc: BaseException) -> bool:
    """True for failures of the sandbox rather than of the code it ran."""
    from sandboxkit import errors

    fatal = (errors.SandboxDiedError, errors.ProtocolError, errors.SessionEndedError, errors.BackendStartError)
    if isinstance(exc, fatal):
        return True
    if isinstance(exc, errors.CodeExecutionError):
        # On DSPy < 3.3 CodeExecutionError *is* CodeInterpreterError; only the classes above are fatal there.
        return False
    return isinstance(exc, errors.CodeInterpreterError)


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return repr(value)


def _print_result(result: Any) -> None:
    from dspy.primitives.code_interpreter import FinalOutput

    if result is None:
        return
    if isinstance(result, FinalOutput):
        text = json.dumps(result.output, indent=2, ensure_ascii=False, default=repr)
    else:
        text = _format_value(result)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _cmd_run(args: argparse.Namespace) -> int:
    options = parse_option_pairs(args.option)
    source = _read_source(args)
    from sandboxkit.errors import CodeInterpreterError

    try:
        interpreter = _make_interpreter(args.backend, options)
    except CodeInterpreterError as exc:
        _error(str(exc))
        return EXIT_SANDBOX_ERROR
    try:
        result = interpreter.execute(source)
    except SyntaxError as exc:
        print(f"SyntaxError: {exc}", file=sys.stderr)
        return EXIT_CODE_ERROR
    except CodeInterpreterError as exc:
        if _is_sandbox_failure(exc):
            _error(f"the sandbox failed: {exc}")
            return EXIT_SANDBOX_ERROR
        print(str(exc), file=sys.stderr)
        return EXIT_CODE_ERROR
    finally:
        interpreter.shutdown()
    _print_result(result)
    return EXIT_OK


# -- demo --------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    options = parse_option_pairs(args.option)
    from sandboxkit import demo

    tasks = demo.TASK_NAMES if args.task == "all" else (args.task,)
    return demo.run_demo(args.backend, options, tasks=tasks, max_iters=args.max_iters)


# -- conformance -------------------------------------------------------------------------------
def _cmd_conformance(args: argparse.Namespace) -> int:
    options = parse_option_pairs(args.option)
    pytest_args = list(args.pytest_args)
    from sandboxkit.api import factory, resolve_backend_name
    from sandboxkit.errors import SandboxkitError

    backend = resolve_backend_name(args.backend)
    try:
        factory(backend, **options)  # report an unknown backend or a bad option before pytest starts
    except SandboxkitError as exc:
        raise UsageError(str(exc)) from exc
    try:
        from sandboxkit.conformance import run_conformance
    except ImportError as exc:
        _error(f"the conformance kit is not available in this installation ({exc})")
        return EXIT_USAGE
    return int(run_conformance(backend, options, pytest_args))


# -- gc ----------------------------------------------------------------------------------------
_GC_FAILED_PREFIX = "error: "


def _cmd_gc(args: argparse.Namespace) -> int:
    from sandboxkit import plugins
    from sandboxkit.errors import SandboxkitError

    names = list(dict.fromkeys(args.backend)) or None  # each backend once, in the order given
    try:
        installed = set(plugins.installed_names())
        for name in names or ():
            if name not in installed:
                plugins.load_backend(name)  # raises BackendNotFoundError listing the installed backends
        # Every name is checked before any backend removes anything.
        results = plugins.collect_garbage(names, dry_run=args.dry_run)
    except SandboxkitError as exc:
        raise UsageError(str(exc)) from exc
    verb = "would remove" if args.dry_run else "removed"
    failed = False
    for name, lines in results.items():
        errors = [line for line in lines if line.startswith(_GC_FAILED_PREFIX)]
        found = [line for line in lines if not line.startswith(_GC_FAILED_PREFIX)]
        if errors:
            failed = True
            for line in errors:
                print(f"{name}: clean-up failed: {line[len(_GC_FAILED_PREFIX):]}")
        if found:
            print(f"{name}:")
            for line in found:
                print(f"  {verb} {line}")
        elif not errors:
            print(f"{name}: nothing to remove")
    sys.stdout.flush()
    return EXIT_SANDBOX_ERROR if failed else EXIT_OK


# -- parser ------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written; descriptions are wrapped by :func:`_wrap`."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _wrap(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(paragraph, width=78) for paragraph in paragraphs)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        "-b",
        metavar="NAME",
        default=None,
        help="backend to run on (default: $SANDBOXKIT_BACKEND, else 'subprocess'); see 'sandboxkit backends'",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="an interpreter option (timeout, grace, output_limit, start_timeout, max_message_bytes, ...) or a "
        "backend option (e.g. memory_mb for 'subprocess'); repeatable. Values are converted to the option's "
        "type; lists are comma-separated",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sandboxkit`` command."""
    parser = argparse.ArgumentParser(
        prog="sandboxkit",
        description=_wrap(
            "Run the Python code a language model writes in the sandbox of your choice, "
            "for DSPy's RLM and the other DSPy modules that execute code."
        ),
        epilog=_EXIT_CODES_TEXT + "\nRun 'sandboxkit COMMAND --help' for a command's options.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_backends = commands.add_parser(
        "backends",
        help="list the installed backends and whether each can run here",
        description=_wrap(
            "List the installed sandboxkit backends: name, the distribution that provides it and its "
            "version, whether it can run on this machine now, and if not why and how to fix it."
        ),
        formatter_class=_Formatter,
    )
    p_backends.add_argument("--json", action="store_true", help="print the list as JSON")
    p_backends.set_defaults(handler=_cmd_backends)

    p_run = commands.add_parser(
        "run",
        help="run Python code in a sandbox and print its output",
        description=_wrap(
            "Run Python code in a fresh sandbox and print what it printed. If the code ends with an "
            "expression whose value is not None, that value is printed instead (strings as they are, other "
            "values as Python reprs); if the code calls SUBMIT(...), the submitted fields are printed as JSON. "
            "The sandbox is removed afterwards."
        ),
        epilog="examples:\n"
        "  sandboxkit run -c 'print(6*7)'\n"
        "  sandboxkit run --backend docker script.py\n"
        "  echo 'import sys; print(sys.version)' | sandboxkit run -\n"
        "  sandboxkit run -o timeout=5 -o memory_mb=512 script.py\n\n" + _EXIT_CODES_TEXT,
        formatter_class=_Formatter,
    )
    _add_backend_options(p_run)
    source = p_run.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", metavar="FILE", help="Python file to run; '-' reads standard input")
    source.add_argument("-c", dest="code", metavar="CODE", help="the code to run, as a string")
    p_run.set_defaults(handler=_cmd_run)

    p_demo = commands.add_parser(
        "demo",
        help="run DSPy's RLM on two example tasks, its code executing in a sandbox",
        description=_wrap(
            "Run DSPy's RLM (Recursive Language Model) on two tasks: the first 12 Fibonacci numbers, "
            "and extracting the modules and optimizers from a generated 100+ KB document, which stays inside "
            "the sandbox while the model's code searches it and sends one snippet to llm_query. Prints each "
            "answer, the number of steps, the code the model ran and its output.",
            "With DSPY_LM_MODEL and an API key (DSPY_LLM_API_KEY or DSPY_LM_API_KEY) set, a real LM writes "
            "the code; DSPY_LM_API_BASE and DSPY_LM_MAX_TOKENS are optional. Otherwise a scripted LM supplies "
            "pre-written steps, whose code still runs in the sandbox and computes the answers.",
        ),
        epilog="examples:\n"
        "  sandboxkit demo\n"
        "  DSPY_LM_MODEL=provider/model-name DSPY_LLM_API_KEY=... sandboxkit demo --backend docker\n\n"
        "exit codes: 0 all tasks succeeded, 1 a task failed, 2 configuration error.",
        formatter_class=_Formatter,
    )
    _add_backend_options(p_demo)
    p_demo.add_argument(
        "--task",
        choices=("all", "fibonacci", "document"),
        default="all",
        help="which task to run (default: all)",
    )
    p_demo.add_argument(
        "--max-iters",
        type=_positive_int,
        default=None,
        metavar="N",
        help="RLM step limit per task (default: 15 for fibonacci, 25 for document)",
    )
    p_demo.set_defaults(handler=_cmd_demo)

    p_conf = commands.add_parser(
        "conformance",
        help="run the conformance kit against a backend",
        description=_wrap(
            "Run sandboxkit's conformance kit (a pytest suite) against a backend, to check that it behaves "
            "as DSPy's code-running modules expect. Tests needing a capability the backend does not declare "
            "are skipped with the reason.",
            "Arguments other than --backend and -o are passed to pytest, and so is everything after '--' "
            "(use it for pytest's own -o).",
        ),
        epilog="examples:\n"
        "  sandboxkit conformance\n"
        "  sandboxkit conformance --backend docker -o timeout=60 -- -x -k timeout\n\n"
        "exit code: pytest's (0 all passed), or 2 for a configuration error.",
        formatter_class=_Formatter,
    )
    _add_backend_options(p_conf)
    p_conf.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARG", help="arguments passed to pytest")
    p_conf.set_defaults(handler=_cmd_conformance)

    p_gc = commands.add_parser(
        "gc",
        help="remove sandboxes left behind by host processes that are provably gone",
        description=_wrap(
            "Remove the sandboxes (e.g. Docker containers) that sandboxkit processes left behind, and print "
            "what was removed, per backend. Sandboxes are normally removed on shutdown, on errors and when "
            "the host process exits; only a host process killed outright (SIGKILL, a crash, a power cut) "
            "leaves them behind.",
            "A sandbox is removed only when its owner is provably gone: the labels on the sandbox name this "
            "same machine and boot, and the owning process id is either not running or now belongs to a "
            "process with a different start time (the pid was reused). A machine that rebooted since counts "
            "as gone. Everything else is left alone: sandboxes of live processes (including other users'), "
            "of other machines, and any whose owner cannot be checked.",
            "Backends without anything to clean up report 'nothing to remove'.",
        ),
        epilog="examples:\n"
        "  sandboxkit gc --dry-run\n"
        "  sandboxkit gc --backend docker\n\n"
        "exit codes: 0 success (also when nothing was removed), 2 unknown backend,\n"
        "3 a backend's clean-up failed (the error is printed).",
        formatter_class=_Formatter,
    )
    p_gc.add_argument(
        "--backend",
        "-b",
        metavar="NAME",
        action="append",
        default=[],
        help="clean up this backend only; repeatable (default: every installed, enabled backend)",
    )
    p_gc.add_argument(
        "--dry-run",
        "-n",
        action="store_true",
        help="only list what would be removed; remove nothing",
    )
    p_gc.set_defaults(handler=_cmd_gc)
    return parser


_CONFORMANCE_VALUE_OPTIONS = ("--backend", "-b", "--option", "-o")


def _split_conformance_args(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``conformance`` arguments into sandboxkit's own and pytest's, keeping pytest's order.

    sandboxkit's are ``--backend``/``-b``, ``--option``/``-o`` (with their values) and ``-h``/``--help``;
    everything else, and everything after ``--``, belongs to pytest.
    """
    ours: list[str] = []
    theirs: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            theirs.extend(tokens[index + 1 :])
            break
        if token in _CONFORMANCE_VALUE_OPTIONS:
            ours.extend(tokens[index : index + 2])
            index += 2
            continue
        if token in ("-h", "--help") or token.startswith(("--backend=", "--option=")) or (
            len(token) > 2 and token[:2] in ("-b", "-o")
        ):
            ours.append(token)
        else:
            theirs.append(token)
        index += 1
    return ours, theirs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sandboxkit`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if argv[:1] == ["conformance"]:
        ours, pytest_args = _split_conformance_args(argv[1:])
        argv = ["conformance", *ours]
    args = parser.parse_args(argv)
    if args.command == "conformance":
        args.pytest_args = pytest_args
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return handler(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sandboxkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
