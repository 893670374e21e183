"""The plugin system: finding, loading, disabling and describing backends, and their options.

Tests that need extra installed plugins build throwaway distributions (a module plus a
``*.dist-info`` directory with ``entry_points.txt``) in a temporary directory and run Python in a
fresh subprocess with that directory on ``PYTHONPATH``, so this process's import state and
metadata caches stay untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import sandboxkit
from sandboxkit.errors import BackendNotFoundError, BackendStartError, OptionError

DISABLE_ENV = "SANDBOXKIT_DISABLE_PLUGINS"
BACKEND_ENV = "SANDBOXKIT_BACKEND"


def run_python(code: str, *, pythonpath: Path | None = None, **env_vars: str) -> object:
    """Run ``code`` in a fresh interpreter and return the JSON value of its last output line."""
    env = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, BACKEND_ENV, "PYTHONPATH")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env.update(env_vars)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=env, cwd=pythonpath or tempfile.gettempdir(), timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Throwaway plugin distributions
# ---------------------------------------------------------------------------------------------

_BACKEND_TEMPLATE = '''
import sandboxkit
from sandboxkit.backend import Availability, Backend

class FakeBackend(Backend):
    name = {backend_name!r}
    description = "a throwaway test backend"

    @classmethod
    def check(cls):
        {check}

    def launch(self, argv, env):
        raise NotImplementedError
'''

#: distribution name -> (entry-point name, module name, module source)
FAKE_PLUGINS = {
    # implements a hook that does not exist (missing "s")
    "sandboxkit-fake-typo": ("typo", "fake_typo", textwrap.dedent('''
        import sandboxkit

        @sandboxkit.hookimpl
        def sandboxkit_register_backend(register):
            pass
    ''')),
    # entry point "wrongname", but the backend it registers is called "actual"
    "sandboxkit-fake-mismatch": ("wrongname", "fake_mismatch", _BACKEND_TEMPLATE.format(
        backend_name="actual", check="return Availability.ok()") + textwrap.dedent('''
        @sandboxkit.hookimpl
        def sandboxkit_register_backends(register):
            register(FakeBackend)
    ''')),
    # registers something that is not a Backend subclass
    "sandboxkit-fake-notabackend": ("notabackend", "fake_notabackend", textwrap.dedent('''
        import sandboxkit

        @sandboxkit.hookimpl
        def sandboxkit_register_backends(register):
            register(object)
    ''')),
    # fails on import
    "sandboxkit-fake-broken": ("broken", "fake_broken", 'raise RuntimeError("boom at import")\n'),
    # loads fine, but cannot run here
    "sandboxkit-fake-offline": ("offline", "fake_offline", _BACKEND_TEMPLATE.format(
        backend_name="offline",
        check='return Availability.unusable("the fake engine is not running", "start the fake engine")',
    ) + textwrap.dedent('''
        @sandboxkit.hookimpl
        def sandboxkit_register_backends(register):
            register(FakeBackend)
    ''')),
}


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> Path:
    """A directory holding the FAKE_PLUGINS as installed distributions."""
    site = tmp_path_factory.mktemp("fake-site")
    for dist, (ep_name, module, source) in FAKE_PLUGINS.items():
        (site / f"{module}.py").write_text(source)
        info = site / f"{dist.replace('-', '_')}-0.0.7.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.7\n")
        (info / "entry_points.txt").write_text(f"[sandboxkit]\n{ep_name} = {module}\n")
    return site


_TRY_ALL = '''
import json, sys, sandboxkit

def attempt(name):
    try:
        interp = sandboxkit.factory(name)()
        try:
            interp.start()  # availability is checked when a sandbox is about to start
        finally:
            interp.shutdown()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None, "message": ""}

results = {name: attempt(name) for name in NAMES}
results["modules"] = sorted(m for m in sys.modules if m.startswith("fake_"))
results["backends"] = {b.name: [b.distribution, b.version, b.usable, b.reason, b.hint] for b in sandboxkit.backends()}
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def outcomes(fake_site) -> dict:
    """What selecting each fake plugin does, from one fresh interpreter."""
    names = [ep for ep, _, _ in FAKE_PLUGINS.values()]
    return run_python(f"NAMES = {names!r}\n" + _TRY_ALL, pythonpath=fake_site)


def test_misspelled_hook_fails_loudly(outcomes):
    result = outcomes["typo"]
    assert result["type"] == "PluginValidationError"
    assert "sandboxkit_register_backend" in result["message"]


def test_entry_point_name_must_match_backend_name(outcomes):
    result = outcomes["wrongname"]
    assert result["type"] == "TypeError"
    assert "'wrongname'" in result["message"] and "'actual'" in result["message"]


def test_registering_a_non_backend_is_a_type_error(outcomes):
    result = outcomes["notabackend"]
    assert result["type"] == "TypeError"
    assert "not a sandboxkit.Backend" in result["message"]


def test_plugin_import_error_propagates_when_selected(outcomes):
    assert outcomes["broken"] == {"type": "RuntimeError", "message": "boom at import"}


def test_unusable_backend_refuses_to_start_with_reason_and_hint(outcomes):
    result = outcomes["offline"]
    assert result["type"] == BackendStartError.__name__
    assert "the fake engine is not running" in result["message"]
    assert "start the fake engine" in result["message"]


def test_backends_reports_every_plugin_without_failing_on_broken_ones(outcomes):
    listed = outcomes["backends"]
    assert listed["offline"] == ["sandboxkit-fake-offline", "0.0.7", False,
                                 "the fake engine is not running", "start the fake engine"]
    distribution, version, usable, reason, _ = listed["broken"]
    assert (distribution, version, usable) == ("sandboxkit-fake-broken", "0.0.7", False)
    assert "plugin failed to load" in reason and "boom at import" in reason
    assert listed["typo"][2] is False and "PluginValidationError" in listed["typo"][3]
    assert listed["subprocess"][:3] == ["sandboxkit", sandboxkit.__version__, True]


def test_selecting_one_backend_loads_only_its_plugin(fake_site):
    result = run_python('''
        import json, sys, sandboxkit
        with sandboxkit.interpreter("subprocess") as interp:
            value = interp.execute("6 * 7")
        print(json.dumps([value, sorted(m for m in sys.modules if m.startswith("fake_"))]))
    ''', pythonpath=fake_site)
    assert result == [42, []]


def test_disabled_plugin_is_never_imported(fake_site):
    result = run_python('''
        import json, sys, sandboxkit
        from sandboxkit.errors import BackendNotFoundError
        names = [b.name for b in sandboxkit.backends()]
        try:
            sandboxkit.factory("broken")
            error = None
        except BackendNotFoundError as exc:
            error = str(exc)
        print(json.dumps([names, error, "fake_broken" in sys.modules, "fake_typo" in sys.modules]))
    ''', pythonpath=fake_site, **{DISABLE_ENV: "broken, typo"})
    names, error, broken_imported, typo_imported = result
    assert "broken" not in names and "typo" not in names
    assert "offline" in names and "subprocess" in names
    assert error is not None and "disabled" in error
    assert (broken_imported, typo_imported) == (False, False)


def test_backend_env_var_selects_the_default(fake_site):
    result = run_python('''
        import json, sandboxkit
        print(json.dumps([sandboxkit.factory().backend_name, sandboxkit.factory("subprocess").backend_name]))
    ''', pythonpath=fake_site, **{BACKEND_ENV: "offline"})
    assert result == ["offline", "subprocess"]


# ---------------------------------------------------------------------------------------------
# The installed backends, in fresh interpreters
# ---------------------------------------------------------------------------------------------

def test_selecting_subprocess_imports_no_other_backend_or_sdk():
    result = run_python('''
        import json, sys, sandboxkit
        from importlib import metadata
        interp = sandboxkit.interpreter("subprocess")
        try:
            value = interp.execute("6 * 7")
        finally:
            interp.shutdown()
        others = [ep.module for ep in metadata.entry_points(group="sandboxkit") if ep.name != "subprocess"]
        print(json.dumps([value, "docker" in sys.modules, "modal" in sys.modules,
                          [m for m in others if m in sys.modules]]))
    ''')
    assert result == [42, False, False, []]


def test_import_sandboxkit_is_light():
    heavy = run_python('''
        import json, sys, sandboxkit
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"dspy", "litellm", "docker", "modal"})))
    ''')
    assert heavy == []


def test_public_functions_survive_submodule_imports():
    # ``sandboxkit.interpreter`` is both a public function and a submodule's name.
    result = run_python('''
        import json, sandboxkit
        sandboxkit.backends()
        print(json.dumps([callable(sandboxkit.interpreter), type(sandboxkit.interpreter).__name__]))
    ''')
    assert result == [True, "function"]


# ---------------------------------------------------------------------------------------------
# In-process: names, disabling, listing, options
# ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def test_unknown_backend_lists_installed_ones():
    with pytest.raises(BackendNotFoundError) as info:
        sandboxkit.factory("no-such-backend")
    err = info.value
    assert isinstance(err, LookupError)
    assert err.name == "no-such-backend"
    assert "subprocess" in err.available
    assert "'no-such-backend'" in str(err) and "subprocess" in str(err)


def test_unknown_backend_from_env_var(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "no-such-backend")
    with pytest.raises(BackendNotFoundError, match="no-such-backend"):
        sandboxkit.factory()
    assert sandboxkit.factory("subprocess").backend_name == "subprocess"


def test_default_backend_is_subprocess():
    assert sandboxkit.factory().backend_name == "subprocess"


def test_disabled_backend_cannot_be_selected_and_is_not_listed(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, " other ,subprocess")
    with pytest.raises(BackendNotFoundError) as info:
        sandboxkit.interpreter("subprocess")
    assert "disabled" in str(info.value) and DISABLE_ENV in str(info.value)
    assert "subprocess" not in info.value.available
    assert "subprocess" not in [b.name for b in sandboxkit.backends()]


def test_backends_describes_subprocess():
    infos = {b.name: b for b in sandboxkit.backends()}
    info = infos["subprocess"]
    assert info.distribution == "sandboxkit"
    assert info.version == metadata.version("sandboxkit") == sandboxkit.__version__
    assert info.usable is True and info.reason == ""
    assert info.description


def test_string_option_values_are_converted():
    f = sandboxkit.factory("subprocess", timeout="2.5", memory_mb="512", pass_env="FOO, BAR", grace="1")
    assert f.session_options.timeout == 2.5
    assert f.session_options.grace == 1.0
    assert f.backend_options.memory_mb == 512
    assert f.backend_options.pass_env == ("FOO", "BAR")
    assert sandboxkit.factory("subprocess", timeout="none").session_options.timeout is None


@pytest.mark.parametrize("option, value", [
    ("timeout", "soon"), ("timeout", "-1"), ("memory_mb", "lots"), ("memory_mb", "1.5"), ("output_limit", "10"),
])
def test_bad_option_value_names_the_option(option, value):
    with pytest.raises(OptionError, match=option):
        sandboxkit.factory("subprocess", **{option: value})


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(OptionError) as info:
        sandboxkit.factory("subprocess", memroy_mb="512")
    message = str(info.value)
    assert "memroy_mb" in message
    assert "memory_mb" in message and "pass_env" in message


def test_unknown_option_listing_includes_interpreter_options():
    # A misspelled interpreter option must point at the right spelling too.
    with pytest.raises(OptionError) as info:
        sandboxkit.factory("subprocess", timout=5)
    assert "timout" in str(info.value) and "timeout" in str(info.value).replace("timout", "")
