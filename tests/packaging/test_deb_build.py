"""packaging/build-deb: what the .deb holds, and what lintian says of it."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

from mytimerd import manpages
from mytimerd.client.ctl.completion import completion_script
from tests.packaging.conftest import REPO, VERSION_1, need_tools

VENV = "usr/lib/mytimerd"
SITE = f"{VENV}/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True)
    return root


def control(root: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (root / "DEBIAN" / "control").read_text().splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_name_version_and_dependencies(deb: Path, unpacked: Path) -> None:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb.name == f"mytimerd_{VERSION_1}_{arch}.deb"
    fields = control(unpacked)
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == (
        "mytimerd",
        VERSION_1,
        arch,
    )
    depends = fields["Depends"]
    # the venv's interpreter, libsystemd (systemd-python), systemd-sysusers
    for dep in ("python3.11", "libsystemd0", "libc6", "systemd |"):
        assert dep in depends, depends
    # nothing a build needs: the target host needs no compiler, headers or index
    names = {alt.split()[0] for dep in depends.split(",") for alt in dep.split("|")}
    assert not {"gcc", "make", "python3-venv", "python3-pip"} & names, depends
    assert not [n for n in names if n.endswith("-dev")], depends


def test_commands_units_and_sysusers(unpacked: Path) -> None:
    for prog in ("mytimerd", "mytimerctl"):
        link = unpacked / "usr/bin" / prog
        assert link.is_symlink(), link
        assert link.resolve() == (unpacked / VENV / "bin" / prog).resolve()
        head = (unpacked / VENV / "bin" / prog).read_text().splitlines()[0]
        assert head == f"#!/{VENV}/bin/python", head
    units = unpacked / "usr/lib/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == [
        "mytimerd-tcp.socket",
        "mytimerd.service",
        "mytimerd.socket",
        "mytimerd@.service",
        "mytimerd@.socket",
    ]
    service = (units / "mytimerd.service").read_text()
    assert "ExecStart=/usr/bin/mytimerd " in service
    assert "/usr/local" not in service + (units / "mytimerd.socket").read_text()
    assert "Documentation=file:/usr/share/doc/mytimerd/systemd.md" in service
    assert not (unpacked / "lib").exists(), "units belong in usr/lib (merged /usr) only"
    sysusers = (unpacked / "usr/lib/sysusers.d/mytimerd.conf").read_text()
    assert sysusers == (REPO / "systemd/mytimerd.sysusers").read_text()


def test_one_daemon_per_library(unpacked: Path) -> None:
    """The template units, libecho's descriptions and the example instance
    /etc/mytimerd/echo.conf (a conffile), whose paths exist in the package."""
    units = unpacked / "usr/lib/systemd/system"
    service = (units / "mytimerd@.service").read_text()
    assert "EnvironmentFile=/etc/mytimerd/%i.conf" in service
    exec_start = "ExecStart=/usr/bin/mytimerd --drain-timeout 10 --fd-store-max 2 $MYTIMERD_ARGS"
    assert exec_start in service
    socket = (units / "mytimerd@.socket").read_text()
    assert "ListenStream=/run/mytimerd-%i.sock" in socket
    assert "/usr/local" not in service + socket
    conffiles = (unpacked / "DEBIAN" / "conffiles").read_text().split()
    assert "/etc/mytimerd/echo.conf" in conffiles, conffiles
    conf = dict(
        line.split("=", 1)
        for line in (unpacked / "etc/mytimerd/echo.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert conf["MYTIMERD_LIBRARY"] == "/usr/lib/mytimerd/libecho.so", conf
    assert conf["MYTIMERD_SCHEMA"] == "/usr/share/mytimerd/descriptions/echo-0.2.cddl", conf
    assert conf["MYTIMERD_ARGS"] == "--config prefix=echo", conf
    library = unpacked / conf["MYTIMERD_LIBRARY"].lstrip("/")
    assert library.is_symlink() and library.resolve().is_file(), library
    assert library.resolve() == (unpacked / SITE / "mytimerd/_lib/libecho.so").resolve()
    for generation in ("0.2", "0.3"):
        shipped = unpacked / f"usr/share/mytimerd/descriptions/echo-{generation}.cddl"
        assert shipped.read_text() == (REPO / f"native/echo/echo-{generation}.cddl").read_text()


def test_bundled_library_and_no_bytecode(unpacked: Path) -> None:
    assert (unpacked / SITE / "mytimerd/_lib/libmy_timer.so").is_file()
    assert list((unpacked / SITE / "mytimerd").glob("_glue*.so")), "the cffi glue is missing"
    for dep in ("cbor2", "cffi", "systemd", "uvloop"):
        assert (unpacked / SITE / dep).is_dir(), dep
    compiled = [p for p in unpacked.rglob("*") if p.suffix == ".pyc" or p.name == "__pycache__"]
    assert compiled == [], "Debian packages ship no bytecode (the postinst compiles it)"
    assert sorted(p.name for p in (unpacked / VENV / "bin").iterdir()) == [
        "mytimerctl",
        "mytimerd",
        "python",
        "python3",
        "python3.11",
    ]


def test_copyright_covers_every_bundled_package(unpacked: Path) -> None:
    """debian/copyright has a stanza for each package pip put in the venv."""
    copyright_text = (unpacked / "usr/share/doc/mytimerd/copyright").read_text()
    bundled = {
        p.name.split(".")[0]
        for p in (unpacked / SITE).iterdir()
        if not p.name.endswith((".dist-info", ".pth")) and p.name != "mytimerd"
    }
    assert {"cbor2", "cffi", "uvloop"} <= bundled, bundled
    missing = sorted(b for b in bundled if f"site-packages/{b}" not in copyright_text)
    assert missing == [], f"packaging/debian/copyright does not cover: {missing}"


def test_man_pages_are_the_help_parsers(unpacked: Path, tmp_path: Path) -> None:
    expected = {p.name: p.read_text() for p in manpages.write_pages(tmp_path)}
    for section, name in (("8", "mytimerd"), ("1", "mytimerctl")):
        page = unpacked / f"usr/share/man/man{section}/{name}.{section}.gz"
        text = gzip.decompress(page.read_bytes()).decode()

        def undated(t: str) -> str:
            return re.sub(r'^(\.TH "\S+" "\d") "[^"]*"', r"\1", t, flags=re.M)

        assert undated(text) == undated(expected[f"{name}.{section}"]), name


def test_completion(unpacked: Path) -> None:
    bash = unpacked / "usr/share/bash-completion/completions/mytimerctl"
    assert bash.read_text() == completion_script("bash")
    zsh = (unpacked / "usr/share/zsh/vendor-completions/_mytimerctl").read_text()
    assert zsh.startswith("#compdef mytimerctl\n")
    assert completion_script("zsh") in zsh


def test_docs(unpacked: Path) -> None:
    doc = unpacked / "usr/share/doc/mytimerd"
    docs = sorted((REPO / "docs").glob("*.md"))
    assert "protocol.md" in [d.name for d in docs]
    for src in [REPO / "README.md", *docs]:
        assert (doc / src.name).read_text() == src.read_text(), src.name
    assert (doc / "copyright").is_file()
    assert (doc / "changelog.Debian.gz").is_file()
    assert (doc / "examples/mytimerd-tcp-listen.conf").is_file()
    haproxy = doc / "examples/haproxy-mytimerd.cfg"
    text = haproxy.read_text()
    assert text == (REPO / "systemd/examples/haproxy-mytimerd.cfg").read_text()
    # every installed path the example names (itself, scale-out.md) is in the package
    named = set(re.findall(r"/usr/share/doc/mytimerd/[\w./-]*\w", text))
    assert "/usr/share/doc/mytimerd/scale-out.md" in named, named
    missing = sorted(p for p in named if not (unpacked / p.lstrip("/")).is_file())
    assert missing == [], f"the HAProxy example names paths the package lacks: {missing}"


def test_lintian_reports_no_error_and_only_explained_warnings(deb: Path) -> None:
    need_tools("lintian")
    r = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in r.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    errors = [line for line in lines if line.startswith("E: ")]
    assert errors == [], "\n".join(errors)
    # 0: nothing at --fail-on (error) level; 1 would be errors, 2 lintian itself failing
    assert r.returncode == 0, f"lintian exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    explained = (REPO / "packaging/README.md").read_text()
    tags = {line.split()[2] for line in lines}
    unexplained = sorted(t for t in tags if f"`{t}`" not in explained)
    assert unexplained == [], (
        f"lintian warnings not explained in packaging/README.md: {unexplained}"
    )
