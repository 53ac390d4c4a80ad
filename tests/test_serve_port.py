"""``labeller serve`` on a busy port says so and starts nothing, instead of printing a URL and failing."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from labeller.cli import cli
from labeller.project import init_project
from labeller.serving import free_port, port_in_use


def test_serve_on_a_busy_port_fails_before_printing_a_url(tmp_path: Path) -> None:
    project = init_project(tmp_path / "project", name="busy")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use(port)
        result = CliRunner().invoke(cli, ["serve", str(project.root), "--port", str(port), "--no-worker"])
    assert result.exit_code == 1
    assert f"port {port} is in use" in result.output
    assert "http://" not in result.output
    assert not port_in_use(free_port())
