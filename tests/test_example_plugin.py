"""The plugin author's path, end to end: install ``docs/example-plugin`` the way a user would
and use the ``nice`` backend it provides.

The example is installed with pip into a throwaway virtual environment that also sees this
environment's packages (sandboxkit, DSPy, pytest), so the environment running the tests is never
modified. Building the example needs setuptools >= 77: taken from this environment when it has
it (no network), else fetched by pip from the package index. This takes some seconds (the
example's own test suite runs the whole conformance kit); it runs in the default test run on
purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example-plugin"
DISTRIBUTION = "sandboxkit-example-nice"
#: Set, the example venv also sees this environment's packages (see ``example_venv``).
PARENT_SITE_FLAG = "SANDBOXKIT_TEST_PARENT_SITE"


def _clean_env(parent_site: bool) -> dict[str, str]:
    drop = ("PYTHONPATH", "SANDBOXKIT_BACKEND", "SANDBOXKIT_DISABLE_PLUGINS", "PYTEST_ADDOPTS", PARENT_SITE_FLAG)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if parent_site:
        env[PARENT_SITE_FLAG] = "1"
    return env


def _run(
    argv: list[str], cwd: Path, *, parent_site: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = _clean_env(parent_site)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _can_build_offline() -> bool:
    """Whether this environment has what the example's build needs (setuptools >= 77, which
    builds wheels by itself), so pip need not fetch it from the package index."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return False
    return major >= 77


class Venv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.workdir = root.parent / "work"
        self.workdir.mkdir()

    def run(self, code: str) -> object:
        """Run ``code`` with the venv's Python; return the JSON value of its last output line."""
        proc = _run([str(self.python), "-c", textwrap.dedent(code)], cwd=self.workdir)
        assert proc.returncode == 0, f"failed in the example venv:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory) -> Venv:
    base = tmp_path_factory.mktemp("example-plugin")
    source = base / "source"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))

    # A venv made from inside a venv would see the base Python's packages, not ours. A .pth file
    # adds this environment's site directories (running their .pth files, which an editable
    # sandboxkit needs) when PARENT_SITE_FLAG is set, making sandboxkit, DSPy and pytest visible.
    venv = Venv(base / "venv")
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], cwd=base)
    assert created.returncode == 0, created.stderr
    purelib = _run([str(venv.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base)
    parent_sites = tuple(p for p in site.getsitepackages() if Path(p).is_dir())
    (Path(purelib.stdout.strip()) / "_parent_site.pth").write_text(
        f"import os, site; os.environ.get({PARENT_SITE_FLAG!r}) and list(map(site.addsitedir, {parent_sites!r}))\n"
    )

    # This environment's pip installs into the venv. Offline when this environment has the build
    # tools; otherwise pip builds in isolation, fetching setuptools from the package index, and
    # the venv must not see this environment's older setuptools then.
    offline = _can_build_offline()
    installed = _run(
        [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--no-deps",
         *(["--no-build-isolation"] if offline else []), str(source)],
        cwd=base, parent_site=offline,
    )
    assert installed.returncode == 0, (
        f"pip install failed:\n{installed.stdout}\n{installed.stderr}"
        + ("" if offline else "\n(pip had to fetch setuptools>=77 from the package index to build the example; "
                              "install it in this environment to build offline)")
    )
    return venv


def test_install_does_not_touch_the_test_environment(example_venv):
    proc = _run([sys.executable, "-c", f"from importlib import metadata; metadata.version({DISTRIBUTION!r})"],
                cwd=example_venv.workdir)
    assert proc.returncode != 0 and "PackageNotFoundError" in proc.stderr
    assert not (EXAMPLE / "build").exists()


def test_backends_lists_the_example(example_venv):
    infos = example_venv.run('''
        import json, sandboxkit
        print(json.dumps({b.name: [b.distribution, b.version, b.usable] for b in sandboxkit.backends()}))
    ''')
    assert infos["nice"] == [DISTRIBUTION, "0.1.0", True]
    assert infos["subprocess"][0] == "sandboxkit"


def test_nice_backend_runs_code_at_low_priority(example_venv):
    value, niceness, module_file, venv_prefix = example_venv.run('''
        import json, sys, sandboxkit
        interp = sandboxkit.interpreter("nice")
        try:
            value = interp.execute("6*7")
            niceness = interp.execute("import os\\nos.nice(0)")
        finally:
            interp.shutdown()
        print(json.dumps([value, niceness, sys.modules["sandboxkit_nice"].__file__, sys.prefix]))
    ''')
    assert value == 42
    assert niceness == min(os.nice(0) + 10, 19)
    assert Path(module_file).is_relative_to(venv_prefix)  # the installed copy, not the sources


def test_example_test_suite_passes(example_venv):
    tests = example_venv.root.parent / "source" / "tests"
    proc = _run([str(example_venv.python), "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider"],
                cwd=example_venv.workdir, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"the example's tests failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary
