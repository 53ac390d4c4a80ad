"""Issue 23 item 2: listening on this machine only cannot be bypassed. The app refuses to show anything when it
listens on every interface without a login (``streamlit run`` by hand, outside the repository), refuses a page
opened under a foreign host name (DNS rebinding: ``evil.example`` resolving to 127.0.0.1), Streamlit refuses the
websocket under such a name, and ``serve --port N`` refuses a port something already holds on [::1]."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from streamlit import config
from streamlit.testing.v1 import AppTest

from labeller.cli import cli
from labeller.project import Project, init_project
from labeller.serving import (
    SECRETS_FILE,
    allowed_hosts,
    free_port,
    host_allowed,
    is_local_address,
    port_in_use,
    start,
    stop,
    streamlit_command,
    wait_until_healthy,
)
from tests.e2e.project_factory import make_app_project
from tests.test_app_pages import MAIN_APP
from tests.test_serve_security import AUTH

FOREIGN = "Host name this server does not answer to"


def _flag(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command) if part == name]


def test_only_the_configured_host_names_are_allowed() -> None:
    local = allowed_hosts("127.0.0.1")
    for header in ("localhost", "localhost:8501", "127.0.0.1:8501", "[::1]:8501", "LOCALHOST.", None):
        assert host_allowed(header, local), header
    for header in ("evil.example", "evil.example:8501", "localhost.evil.example", "127.0.0.1.nip.io", "", "a b"):
        assert not host_allowed(header, local), header
    assert not host_allowed("localhost:99999", local)  # malformed: refused
    assert not host_allowed("user@localhost", local)
    # With a login, the redirect host too; a specific address to listen on; a wildcard bind adds nothing.
    login = allowed_hosts("0.0.0.0", "https://Labels.Example.org/oauth2callback")
    assert host_allowed("labels.example.org", login) and not host_allowed("0.0.0.0", login)
    assert not host_allowed("evil.example", login)
    assert host_allowed("192.168.1.4:8501", allowed_hosts("192.168.1.4"))
    # Streamlit's own server.allowedHosts patterns are honoured.
    assert host_allowed("a.example.org", allowed_hosts(None, None, ["*.example.org"]))


def test_an_address_is_local_only_when_it_is_a_loopback_one() -> None:
    for address in ("127.0.0.1", "::1", "[::1]", "localhost", "unix:///tmp/app.sock"):
        assert is_local_address(address), address
    # Unset: Streamlit listens on every interface (``streamlit run`` outside the repository).
    for address in (None, "", "0.0.0.0", "::", "192.168.1.4", "labels.example.org"):
        assert not is_local_address(address), address


def test_serve_passes_the_allowed_hosts_to_streamlit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    project = init_project(tmp_path / "project", name="hosts")
    assert _flag(streamlit_command(project, 8601), "--server.allowedHosts") == ["localhost", "127.0.0.1", "::1"]
    secrets = project.root / SECRETS_FILE
    secrets.parent.mkdir()
    secrets.write_text(AUTH)
    monkeypatch.setattr("labeller.serving.importlib.util.find_spec", lambda name: object())  # Authlib "installed"
    hosts = _flag(streamlit_command(project, 8601, "0.0.0.0"), "--server.allowedHosts")
    assert hosts == ["localhost", "127.0.0.1", "::1", "labels.example.org"]


def _handshake(port: int, host: str) -> bytes:
    """The status line Streamlit answers a websocket handshake with, sent under ``host``."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(
            f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return connection.recv(4096).split(b"\r\n")[0]


def test_the_served_app_refuses_a_websocket_under_a_foreign_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    served = start(init_project(tmp_path / "project", name="hosts"), with_worker=False)
    try:
        assert wait_until_healthy(served, timeout=120)
        assert b" 101 " in _handshake(served.port, f"localhost:{served.port}")
        assert b" 101 " in _handshake(served.port, f"[::1]:{served.port}")
        assert b" 403 " in _handshake(served.port, f"evil.example:{served.port}")
        assert b" 403 " in _handshake(served.port, "evil.example")
    finally:
        stop(served)


@pytest.fixture
def app_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=4)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def test_a_page_opened_under_a_foreign_host_name_shows_nothing(
    app_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("labeller.app.state.request_host", lambda: "evil.example:8501")
    app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    assert not app.exception, app.exception
    assert FOREIGN.lower() in app.error[0].value.lower()
    assert not app.button and not app.selectbox and not app.sidebar.markdown  # no identity picker, no project
    monkeypatch.setattr("labeller.app.state.request_host", lambda: "localhost:8501")
    app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    assert not app.exception, app.exception
    assert not any(FOREIGN.lower() in error.value.lower() for error in app.error)
    assert app.sidebar.markdown  # the project's name


def test_a_server_on_every_interface_shows_nothing_without_login(app_project: Project) -> None:
    """``streamlit run labeller/app/main.py`` from outside the repository: no address, every interface."""
    previous = config.get_option("server.address")
    config.set_option("server.address", None)
    try:
        app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    finally:
        config.set_option("server.address", previous)
    assert "listens beyond this machine but has no login" in app.error[0].value
    assert "labeller serve" in app.error[0].value  # how to start it safely
    assert not app.button and not app.selectbox


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_serve_refuses_a_port_taken_on_ipv6_localhost(tmp_path: Path) -> None:
    project = init_project(tmp_path / "project", name="busy6")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use(port)
        result = CliRunner().invoke(cli, ["serve", str(project.root), "--port", str(port), "--no-worker"])
        assert free_port() != port
    assert result.exit_code == 1
    assert f"port {port} is in use on [::1]" in result.output
    assert "http://" not in result.output  # nothing started
