"""`pip install` of the checkout gives a working bootsvc: the wheel holds
every package and its data (the shipped profiles, the demo image's scripts,
the web page), and installed in a fresh venv, run from / so nothing of the
checkout is importable, `bootsvc check` loads the demo config with its
shipped profiles and `bootsvc serve` serves the web page. `make install`
runs for real, with what it writes to /etc, /opt and /usr kept in overlays
of a mount namespace of its own: the user bootsvc runs the unit's command.

The venv gets bootsvc's dependencies from the package index as pip is
configured (its cache makes a second run quick): that also proves
pyproject.toml names every library bootsvc imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from bootsvc import __version__
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, free_port, stop

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# What a fresh checkout does not hold, or a build leaves behind.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "state", "out")


def run(*argv: str | Path, timeout: float = 300, cwd: Path = Path("/")) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout, as a fresh clone has it (a build writes into its tree)."""
    src = tmp_path_factory.mktemp("install") / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", source.parent / "dist", source)
    (found,) = (source.parent / "dist").glob("bootsvc-*.whl")
    return found


def test_wheel_holds_every_package_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for top in ("bootsvc", "isns", "target")
                for p in (ROOT / top).rglob("__init__.py")}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()
    for pattern, into in (("profiles/*.yaml", "bootsvc/shipped_profiles"), ("bootsvc/demo/*.sh", "bootsvc/demo"),
                          ("bootsvc/web/*.*", "bootsvc/web")):
        files = sorted(ROOT.glob(pattern))
        assert files, pattern
        assert {f"{into}/{f.name}" for f in files} <= names, pattern
    meta = zipfile.ZipFile(wheel).read(f"bootsvc-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: GPL-2.0-only" in meta.splitlines()
    assert f"bootsvc-{__version__}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "profiles/", "bench/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    venv = wheel.parent / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return venv


def test_installed_bootsvc_checks_the_demo_config(venv: Path) -> None:
    bootsvc = venv / "bin" / "bootsvc"
    assert run(bootsvc, "--version").stdout == f"bootsvc {__version__}\n"
    where = run(venv / "bin" / "python", "-c", "import bootsvc.profiles as p; print(p.__file__); print(p.SHIPPED)")
    module, shipped = where.stdout.split()
    assert module.startswith(str(venv)) and shipped.startswith(str(venv)), where.stdout
    # demo.yaml listens on the demo lab's bridge, there only while `bootsvc vm`
    # runs: where check also checks this host's addresses, check it as a
    # config for elsewhere
    elsewhere = ["--elsewhere"] if "--elsewhere" in run(bootsvc, "check", "--help").stdout else []
    r = run(bootsvc, "check", *elsewhere, "-c", ROOT / "examples" / "demo.yaml")
    shipped = len(list((ROOT / "profiles").glob("*.yaml")))
    assert f": ok (4 machine(s), {shipped} profile(s)" in r.stdout, r.stdout  # every one from the wheel


def test_installed_bootsvc_serves(venv: Path, tmp_path: Path) -> None:
    port, iscsi = free_port(), free_port()
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: iqn.2026-11.test.install\n"
                   f"listen:\n  http: {LOOPBACK}:{port}\n  iscsi: [{LOOPBACK}:{iscsi}]\n"
                   "default_profile: demo-linux\nmachines:\n  52:54:00:00:00:01: {hostname: node01}\n")
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([venv / "bin" / "bootsvc", "-q", "serve", "-c", cfg], cwd="/",
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while "ready:" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/", timeout=10) as page:
            assert b"<html" in page.read()
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()


# `make install` inside a mount namespace whose /etc, /opt and /usr are
# overlays on the real ones (writes go to the test's folders and vanish with
# the namespace), then what the service does with it, as its user.
MAKE_INSTALL = """set -eu
for d in etc opt usr; do
    mkdir -p "$LAYERS/$d/upper" "$LAYERS/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$LAYERS/$d/upper,workdir=$LAYERS/$d/work" "/$d"
done
make -C "$SRC" install
printf 'state_dir: %s\\n' "$STATE" > /etc/bootsvc/bootsvc.yaml
chown root:bootsvc /etc/bootsvc/bootsvc.yaml
chmod 0640 /etc/bootsvc/bootsvc.yaml
echo "link: $(readlink /usr/local/bin/bootsvc)"
echo "user: $(getent passwd bootsvc)"
runuser -u bootsvc -- /usr/local/bin/bootsvc --version
runuser -u bootsvc -- /usr/local/bin/bootsvc check -c /etc/bootsvc/bootsvc.yaml
systemd-analyze verify /etc/systemd/system/bootsvc.service
ls /usr/share/doc/bootsvc
"""


def test_make_install(source: Path, tmp_path: Path) -> None:
    need("unshare", "runuser", "systemd-sysusers", "systemd-analyze")
    state = tmp_path / "state"
    state.mkdir()
    tmp_path.chmod(0o755)  # the user bootsvc reads its config's state_dir path
    env = {**os.environ, "LAYERS": str(tmp_path / "layers"), "SRC": str(source), "STATE": str(state)}
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", MAKE_INSTALL], cwd="/",
                       env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout.splitlines()
    assert "link: /opt/bootsvc/bin/bootsvc" in out
    assert any(line.startswith("user: bootsvc:x:") and line.endswith(":/var/lib/bootsvc:/usr/sbin/nologin")
               for line in out), out
    assert f"bootsvc {__version__}" in out
    assert any(line.startswith("/etc/bootsvc/bootsvc.yaml: ok (") for line in out), out
    assert out[-2:] == ["LICENSE", "README.md"]
    assert not Path("/opt/bootsvc").exists()  # the real / untouched
