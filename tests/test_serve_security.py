"""Issue 12 item 6 (security), ``labeller serve``: it listens on 127.0.0.1 unless told otherwise, and refuses
to listen anywhere else without a working login (Streamlit's OIDC, an [auth] section in the secrets)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labeller.cli import cli
from labeller.project import Project, init_project
from labeller.serving import (
    SECRETS_FILE,
    ServeError,
    check_host,
    is_loopback,
    login_problem,
    secrets_files,
    start,
    stop,
    streamlit_command,
    wait_until_healthy,
)

AUTH = """
[auth]
redirect_uri = "https://labels.example.org/oauth2callback"
cookie_secret = "a-long-random-string-kept-out-of-the-repository"
client_id = "labeller"
client_secret = "not-a-real-secret"
server_metadata_url = "https://accounts.example.org/.well-known/openid-configuration"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    # No secrets from the machine running the tests: an empty home and working folder.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return init_project(tmp_path / "project", name="security")


def _flag(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command) if part == name]


def test_the_app_listens_on_this_machine_only_by_default(project: Project) -> None:
    command = streamlit_command(project, 8601)
    assert _flag(command, "--server.address") == ["127.0.0.1"]
    assert _flag(command, "--server.port") == ["8601"]
    # The secrets serve checks are exactly those the app reads (the project's own last: it wins).
    assert _flag(command, "--secrets.files") == [str(path) for path in secrets_files(project)]
    assert _flag(command, "--secrets.files")[-1] == str(project.root / SECRETS_FILE)


def test_serve_refuses_another_address_without_a_login(project: Project) -> None:
    result = CliRunner().invoke(cli, ["serve", str(project.root), "--host", "0.0.0.0", "--no-worker"])
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0 without a login: no login is configured" in result.output
    assert str(project.root / SECRETS_FILE) in result.output  # where to configure it
    assert "http://" not in result.output  # nothing started


def test_a_login_section_must_be_complete_and_usable(project: Project) -> None:
    secrets = project.root / SECRETS_FILE
    secrets.parent.mkdir()
    secrets.write_text('[auth]\nredirect_uri = "https://x/oauth2callback"\n')
    problem = login_problem(secrets_files(project), authlib_installed=True)
    assert problem == (
        "the [auth] section lacks cookie_secret; a provider's client_id, client_secret, server_metadata_url"
    )
    secrets.write_text(AUTH)
    assert login_problem(secrets_files(project), authlib_installed=True) is None
    assert "pip install 'latent-labeller[auth]'" in str(login_problem(secrets_files(project), authlib_installed=False))
    # A named provider ([auth.google]) counts as well.
    provider = AUTH.replace("client_id", "[auth.google]\nclient_id", 1)
    secrets.write_text(provider)
    assert login_problem(secrets_files(project), authlib_installed=True) is None


def test_with_a_login_configured_serve_listens_where_asked(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = project.root / SECRETS_FILE
    secrets.parent.mkdir()
    secrets.write_text(AUTH)
    monkeypatch.setattr("labeller.serving.importlib.util.find_spec", lambda name: object())  # Authlib "installed"
    check_host(project, "0.0.0.0")  # no refusal
    assert _flag(streamlit_command(project, 8601, "0.0.0.0"), "--server.address") == ["0.0.0.0"]
    for local in ("127.0.0.1", "localhost", "::1"):
        assert is_loopback(local)
    for remote in ("0.0.0.0", "::", "192.168.1.4", "labels.example.org"):
        assert not is_loopback(remote)
    secrets.unlink()
    with pytest.raises(ServeError, match="without a login"):
        check_host(project, "192.168.1.4")


def _listening_addresses(port: int) -> set[str]:
    """The addresses a socket listens on at ``port``, from the kernel's own tables."""
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # Each 32-bit word is in the host's (little-endian) order.
            found.add(str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/net tables")
def test_the_started_app_listens_only_on_127_0_0_1(project: Project) -> None:
    served = start(project, with_worker=False)
    try:
        assert wait_until_healthy(served, timeout=120)
        assert _listening_addresses(served.port) == {"127.0.0.1"}
    finally:
        stop(served)
