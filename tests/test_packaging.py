"""The wheel carries the driver and the built-in backend, so an installed sandboxkit can run."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_driver_source_and_registers_the_subprocess_backend(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sandboxkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        archive.extractall(tmp_path / "site")
    assert "sandboxkit_driver/sandbox_driver.py" in names
    assert "sandboxkit_subprocess/__init__.py" in names
    assert "sandboxkit/py.typed" in names
    assert "[sandboxkit]" in entry_points and "subprocess = sandboxkit_subprocess" in entry_points

    # From the unpacked wheel alone (no site-packages, no editable hooks), the locator finds the
    # very file the wheel carries.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sandboxkit_driver as d; "
        "print(d.DRIVER_PATH); print(len(d.driver_source()))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(tmp_path / "site")], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0] == str(tmp_path / "site" / "sandboxkit_driver" / "sandbox_driver.py")
    assert int(out[1]) == len((ROOT / "driver" / "sandbox_driver.py").read_bytes())


def test_driver_source_compiles_for_python_3_8_grammar():
    source = (ROOT / "driver" / "sandbox_driver.py").read_text()
    import ast

    tree = ast.parse(source, feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names), f"non-stdlib imports: {imported - set(sys.stdlib_module_names)}"
