"""Operations: the systemd unit (ops/gateway.service) as systemd itself reads it, and the set-up
the README promises (`make run`, `make test`; the Debian packages from
tools/system-packages.sh).

A tool these tests need and cannot find (systemd-analyze, make) fails them: `make test`
installs both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "ops" / "gateway.service"
SYSTEM_PACKAGES = ROOT / "tools" / "system-packages.sh"
INSTALLED_GATEWAY = "/opt/gateway/.venv/bin/gateway"
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (tools/system-packages.sh test installs it)")
    return path


def unit_copy(directory: Path, extra: str = "") -> Path:
    """The unit as shipped, but starting this checkout's `gateway` (systemd-analyze checks that
    the ExecStart program exists), with ``extra`` appended as a drop-in would add it."""
    gateway = Path(sys.executable).parent / "gateway"
    assert gateway.exists(), f"{gateway}: the package is not installed in this venv"
    text = UNIT.read_text()
    assert INSTALLED_GATEWAY in text
    path = directory / "gateway.service"
    path.write_text(text.replace(INSTALLED_GATEWAY, str(gateway)) + extra)
    return path


def documented_drop_in() -> str:
    """The drop-in the unit's comments give for ports below 1024."""
    lines = [
        match.group(1)
        for line in UNIT.read_text().splitlines()
        if (match := re.fullmatch(r"#   (\[Service\]|[A-Z][A-Za-z]+=\S.*)", line))
    ]
    assert lines[:1] == ["[Service]"], "no drop-in for ports below 1024 in the unit's comments"
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines
    return "\n".join(lines) + "\n"


def directives(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


VARIANTS = ["as shipped", "ports below 1024"]


def variant_extra(variant: str) -> str:
    return documented_drop_in() if variant == "ports below 1024" else ""


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_verifies_without_warnings(tmp_path: Path, variant: str) -> None:
    # systemd 252 (Debian 12) read Type=notify-reload as "Failed to parse service type,
    # ignoring" and ran the gateway as Type=simple.
    unit = unit_copy(tmp_path, variant_extra(variant))
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_exposure_at_most_2(tmp_path: Path, variant: str) -> None:
    unit = unit_copy(tmp_path, variant_extra(variant))
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert float(found.group(1)) <= MAX_EXPOSURE, "\n".join(failed)


def test_unit_is_type_notify_with_reload_by_signal() -> None:
    values = directives(UNIT)
    assert values["Type"] == ["notify"]
    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert values["NotifyAccess"] == ["main"]
    assert values["WatchdogSec"] == ["60"]
    # The configured ports are unprivileged: no capability unless the drop-in asks for one.
    assert values["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in values


def make_dry_run(target: str, tmp_path: Path) -> list[str]:
    """What `make TARGET` would run on a machine without the venv yet."""
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    result = subprocess.run(
        [tool("make"), "-n", "--no-print-directory", target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return result.stdout.splitlines()


def first_index(lines: list[str], needle: str) -> int:
    for index, line in enumerate(lines):
        if needle in line:
            return index
    raise AssertionError(f"{needle!r} not in:\n" + "\n".join(lines))


def test_make_test_sets_up_the_debian_packages_first(tmp_path: Path) -> None:
    # Only .ci/run installed the test peers: `make test` on a fresh machine failed 23 tests.
    lines = make_dry_run("test", tmp_path)
    packages = first_index(lines, "tools/system-packages.sh test")
    assert packages == 0
    assert packages < first_index(lines, "-m venv") < first_index(lines, "pip install")
    assert "'.[test]'" in lines[first_index(lines, "pip install --quiet -e")]
    assert first_index(lines, "ruff check") < first_index(lines, "-m pytest")


def test_make_run_installs_no_test_extras(tmp_path: Path) -> None:
    # `make run` used to install pytest, Playwright, ruff and mypy as well.
    lines = make_dry_run("run", tmp_path)
    assert first_index(lines, "tools/system-packages.sh venv") < first_index(lines, "-m venv")
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 1
    assert installs[0].endswith("-m pip install --quiet -e .")
    assert not any("[test" in line or "system-packages.sh test" in line for line in lines)
    # Its own stamp: a venv set up for `make run` is not taken for one with the test extras.
    test_lines = make_dry_run("test", tmp_path)
    assert lines[first_index(lines, "touch")] != test_lines[first_index(test_lines, "touch")]
    assert lines[-1].endswith("-m gateway serve")


def test_ci_runs_make_test_and_one_script_installs_packages() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().splitlines()[-1] == "make test"
    for path in [ROOT / ".ci" / "run", ROOT / "Makefile", ROOT / "tests" / "peers" / "install.sh"]:
        assert "apt-get" not in path.read_text(), path
    assert "apt-get install" in SYSTEM_PACKAGES.read_text()


def test_readme_first_screen_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make run", "make test"]


def fake_commands(directory: Path, log: Path, *, uid: int, sudo_works: bool) -> dict[str, str]:
    """A PATH where nothing is installed (dpkg-query knows no package), the user is ``uid``,
    and sudo, apt-get and debconf-set-selections only write down how they were called."""
    directory.mkdir()
    scripts = {
        "dpkg-query": "echo 'dpkg-query: no packages found matching' >&2; exit 1",
        "id": f"echo {uid}",
        "sudo": f'echo "sudo $*" >>{log}; exit {0 if sudo_works else 1}',
        "apt-get": f'echo "apt-get $*" >>{log}; exit 1',
        "debconf-set-selections": f'echo "debconf-set-selections" >>{log}; exit 1',
    }
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    search = f"{directory}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**os.environ, "PATH": search, "PYTHON": "python3"}


def run_system_packages(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("bash"), str(SYSTEM_PACKAGES), "test"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_system_packages_does_nothing_when_all_are_there(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    env = fake_commands(tmp_path / "bin", log, uid=1000, sudo_works=True)
    (tmp_path / "bin" / "dpkg-query").unlink()  # the real one: everything is installed
    result = run_system_packages(env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Neither sudo nor apt-get (nor apt-get update) ran.
    assert not log.exists(), log.read_text() + result.stderr


def test_system_packages_without_root_or_sudo_names_the_packages(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    env = fake_commands(tmp_path / "bin", log, uid=1000, sudo_works=False)
    result = run_system_packages(env)
    assert result.returncode == 1
    assert log.read_text() == "sudo -- true\n"  # tried, refused; apt-get never ran
    message = result.stderr
    assert "not root, and sudo is not available or refused" in message
    for package in ["postfix", "dovecot-pop3d", "fetchmail", "swaks", "chromium", "systemd"]:
        assert package in message
    assert re.search(r"apt-get install (python3-venv )?make rsync chromium", message)


def test_system_packages_uses_sudo_when_not_root(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    env = fake_commands(tmp_path / "bin", log, uid=1000, sudo_works=True)
    result = run_system_packages(env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "sudo -- true",
        f"sudo -- env PYTHON=python3 bash {SYSTEM_PACKAGES} test",
    ]
