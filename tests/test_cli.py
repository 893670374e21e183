"""The ``sandboxkit`` command line, run as a subprocess the way users run it, plus unit tests of
its argument handling and of the demo's document and checks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from importlib import metadata

import pytest

from sandboxkit import cli

#: Only a guard against a hung child; no test asserts anything about time.
HANG_GUARD_SECONDS = 300

FIBONACCI_ANSWER = "0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89"


def run_cli(*args: str, cwd=None, stdin: str | None = None, env_update: dict | None = None,
            env_remove: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in ("SANDBOXKIT_BACKEND", "SANDBOXKIT_DISABLE_PLUGINS", "DSPY_LM_MODEL", *env_remove):
        env.pop(name, None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update(env_update or {})
    return subprocess.run(
        [sys.executable, "-m", "sandboxkit.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD_SECONDS,
    )


# -- top level and help ------------------------------------------------------------------------
def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"sandboxkit {metadata.version('sandboxkit')}")


def test_no_command_prints_help_and_fails():
    result = run_cli()
    assert result.returncode == 2
    for command in ("backends", "run", "demo", "conformance"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["backends", "run", "demo", "conformance"])
def test_help_of_each_subcommand(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: sandboxkit {command}")
    if command != "backends":
        assert "--backend" in result.stdout and "KEY=VALUE" in result.stdout


# -- backends ----------------------------------------------------------------------------------
def test_backends_lists_subprocess_as_usable():
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    row = next(row for row in rows if row and row[0] == "subprocess")
    assert row[1:4] == ["sandboxkit", metadata.version("sandboxkit"), "yes"]


def test_backends_json():
    result = run_cli("backends", "--json")
    assert result.returncode == 0, result.stderr
    entries = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert entries["subprocess"]["usable"] is True
    assert entries["subprocess"]["distribution"] == "sandboxkit"


def test_backends_leaves_out_disabled_plugins():
    result = run_cli("backends", "--json", env_update={"SANDBOXKIT_DISABLE_PLUGINS": "subprocess"})
    assert result.returncode == 0, result.stderr
    assert "subprocess" not in {entry["name"] for entry in json.loads(result.stdout)}


# -- run ---------------------------------------------------------------------------------------
def test_run_code_prints_output():
    result = run_cli("run", "-c", "print(6*7)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"


def test_run_file(tmp_path):
    script = tmp_path / "squares.py"
    script.write_text("total = 0\nfor n in range(1, 5):\n    total += n * n\n    print(n, total)\n")
    result = run_cli("run", str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1 1", "2 5", "3 14", "4 30"]


def test_run_reads_standard_input():
    result = run_cli("run", "-", stdin="import sys\nprint(sys.version_info[0] * 2)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6\n"


def test_run_prints_final_expression_value():
    result = run_cli("run", "-c", "data = {'b': [1, 2], 'a': None}\ndata")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "{'b': [1, 2], 'a': None}\n"


def test_run_prints_submitted_fields_as_json():
    result = run_cli("run", "-c", "values = [3, 4]\nSUBMIT(answer=sum(values), parts=values)")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"answer": 7, "parts": [3, 4]}


def test_run_code_error_exits_1():
    result = run_cli("run", "-c", "1/0")
    assert result.returncode == 1
    # Worded like DSPy's interpreters: the exception's name, then its arguments.
    assert "ZeroDivisionError: ['division by zero']" in result.stderr
    assert result.stdout == ""


def test_run_syntax_error_exits_1():
    result = run_cli("run", "-c", "def broken(:\n    pass")
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr


def test_run_unknown_backend_exits_2_and_lists_installed():
    result = run_cli("run", "--backend", "nope", "-c", "1")
    assert result.returncode == 2
    assert "'nope'" in result.stderr
    assert "subprocess" in result.stderr


def test_run_bad_option_value_exits_2():
    result = run_cli("run", "-o", "timeout=abc", "-c", "1")
    assert result.returncode == 2
    assert "timeout" in result.stderr and "'abc'" in result.stderr


@pytest.mark.parametrize("option", ["timeout", "=5", "frobnicate=1"])
def test_run_malformed_or_unknown_option_exits_2(option):
    result = run_cli("run", "-o", option, "-c", "1")
    assert result.returncode == 2
    assert "sandboxkit: error:" in result.stderr


def test_run_missing_file_exits_2(tmp_path):
    result = run_cli("run", str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert "missing.py" in result.stderr


def test_run_needs_exactly_one_source():
    assert run_cli("run").returncode == 2
    assert run_cli("run", "-c", "1", "file.py").returncode == 2


def test_run_timeout_exits_1_with_message():
    result = run_cli("run", "-o", "timeout=1", "-c", "print('spinning', flush=True)\nwhile True: pass")
    assert result.returncode == 1
    assert "timeout" in result.stderr.lower()
    assert "spinning" in result.stderr  # the output before the timeout is shown with the error


def test_run_sandbox_death_exits_3():
    result = run_cli("run", "-c", "import os\nos._exit(9)")
    assert result.returncode == 3
    assert "sandbox" in result.stderr


def test_run_uses_backend_from_environment_variable():
    result = run_cli("run", "-c", "1", env_update={"SANDBOXKIT_BACKEND": "nope"})
    assert result.returncode == 2
    assert "'nope'" in result.stderr


# -- demo --------------------------------------------------------------------------------------
def test_demo_with_scripted_lm(tmp_path):
    result = run_cli("demo", cwd=tmp_path, env_remove=("DSPY_LLM_API_KEY", "DSPY_LM_API_KEY"))
    assert result.returncode == 0, result.stdout + result.stderr
    first_line = result.stdout.splitlines()[0]
    assert "scripted lm" in first_line.lower()
    assert "DSPY_LM_MODEL" in result.stdout  # says how to use a real LM
    assert f"answer: {FIBONACCI_ANSWER}" in result.stdout.splitlines()
    assert result.stdout.count("result: OK") == 2
    assert "backend: subprocess" in result.stdout
    assert "2/2 tasks succeeded" in result.stdout


def test_demo_model_without_key_falls_back_to_scripted(tmp_path):
    result = run_cli(
        "demo", "--task", "fibonacci", cwd=tmp_path,
        env_update={"DSPY_LM_MODEL": "provider/some-model"},
        env_remove=("DSPY_LLM_API_KEY", "DSPY_LM_API_KEY"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no API key" in result.stdout
    assert f"answer: {FIBONACCI_ANSWER}" in result.stdout.splitlines()


def test_demo_unknown_backend_exits_2():
    result = run_cli("demo", "--backend", "nope")
    assert result.returncode == 2
    assert "subprocess" in result.stderr


def test_demo_answers_come_from_the_sandbox(monkeypatch):
    """Change the generated document: the scripted steps' code finds the new names, so the
    answer is computed in the sandbox, not written into the script."""
    from sandboxkit import demo

    monkeypatch.setattr(demo, "_MODULES", ("Aardvark", "Zebu"))
    monkeypatch.setattr(demo, "_OPTIMIZERS", ("Quokka",))
    out = io.StringIO()
    code = demo.run_demo(tasks=["document"], out=out, env={})
    text = out.getvalue()
    assert code == 0, text
    assert "modules: Aardvark, Zebu" in text.splitlines()
    assert "optimizers: Quokka" in text.splitlines()


# -- conformance -------------------------------------------------------------------------------
def test_conformance_unknown_backend_exits_2():
    result = run_cli("conformance", "--backend", "nope")
    assert result.returncode == 2
    assert "subprocess" in result.stderr


def test_conformance_passes_backend_options_and_pytest_args(monkeypatch):
    calls = []
    fake = types.ModuleType("sandboxkit.conformance")
    fake.run_conformance = lambda backend, options, pytest_args: calls.append((backend, options, pytest_args)) or 7
    monkeypatch.setitem(sys.modules, "sandboxkit.conformance", fake)
    monkeypatch.delenv("SANDBOXKIT_BACKEND", raising=False)
    code = cli.main(["conformance", "-x", "-o", "timeout=5", "-k", "echo", "--", "-o", "xfail_strict=true"])
    assert code == 7
    assert calls == [("subprocess", {"timeout": "5"}, ["-x", "-k", "echo", "-o", "xfail_strict=true"])]


# -- units -------------------------------------------------------------------------------------
def test_parse_option_pairs():
    assert cli.parse_option_pairs(["timeout=5", "env=A=1,B=2", "timeout=7"]) == {"timeout": "7", "env": "A=1,B=2"}
    with pytest.raises(cli.UsageError):
        cli.parse_option_pairs(["novalue"])


def test_split_conformance_args():
    ours, theirs = cli._split_conformance_args(["-b", "docker", "-q", "--option=grace=2", "tests", "--", "-b"])
    assert ours == ["-b", "docker", "--option=grace=2"]
    assert theirs == ["-q", "tests", "-b"]


def test_demo_document_is_long_deterministic_and_complete():
    from sandboxkit import demo

    first, second = demo.build_document(), demo.build_document()
    assert first == second
    assert len(first.text.encode()) > 100_000
    for name in first.modules:
        assert f"### ef.{name}\nKind: module\n" in first.text
    for name in first.optimizers:
        assert f"### ef.{name}\nKind: optimizer\n" in first.text


def test_demo_checks_reject_wrong_answers():
    from sandboxkit import demo

    catalog = demo.build_document()
    ok, _ = demo._check_fibonacci(FIBONACCI_ANSWER)
    assert ok
    assert not demo._check_fibonacci("0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55")[0]
    right = types.SimpleNamespace(modules=list(catalog.modules), optimizers=list(catalog.optimizers))
    assert demo._check_document(right, catalog)[0]
    wrong = types.SimpleNamespace(modules=list(catalog.modules[1:]), optimizers=[*catalog.optimizers, "Settings"])
    ok, detail = demo._check_document(wrong, catalog)
    assert not ok and catalog.modules[0] in detail and "Settings" in detail


def test_scripted_sub_lm_answers_from_the_prompt():
    from sandboxkit import demo

    reply = demo.ScriptedSubLM()("Principles:\n- First idea: text.\n- Second idea: more.\n")
    assert reply == ["First idea; Second idea"]
