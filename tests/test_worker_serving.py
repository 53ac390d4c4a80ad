"""``labeller serve``: the Streamlit app and a worker start together and stop together on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from db.schema import JobStatus
from labeller.serving import free_port
from tests.worker_helpers import enqueue, job_row, make_project, wait_for, wait_for_status, worker_environment


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.read() == b"ok"
    except OSError:
        return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does to a command started with '&'


@pytest.mark.parametrize(
    ("stop_signal", "started_in_background"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "ctrl-c-background", "sigterm"],
)
def test_serve_runs_the_app_and_a_worker_and_a_signal_stops_both(tmp_path, stop_signal, started_in_background) -> None:
    # serve's worker heartbeats every 5 s: a timeout under 15 s would be refused (and fail healthy jobs).
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0, heartbeat_timeout_seconds=60)
    port = free_port()
    served = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from labeller.cli import main; main()",
            "serve",
            str(project.root),
            "--port",
            str(port),
        ],
        # Buffered as under systemd or docker: the URL line must be flushed by serve itself.
        env={name: value for name, value in worker_environment().items() if name != "PYTHONUNBUFFERED"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint if started_in_background else None,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(served.stdout), daemon=True)
    reader.start()
    url_line = f"Latent Labeller: http://localhost:{port}"
    try:
        # Signalled once the URL is printed, as a user would: serve prints it after its own health check,
        # which can finish after ours on a loaded machine.
        wait_for(lambda: any(url_line in line for line in lines), 120, "serve to print the app's URL", interval=0.5)
        assert _health(port)
        ping = enqueue(project, "ping")
        wait_for_status(project, ping, (JobStatus.SUCCEEDED,), timeout=60)  # the worker runs jobs
        served.send_signal(stop_signal)
        assert served.wait(timeout=60) == 0
    finally:
        if served.poll() is None:
            served.kill()
    reader.join(timeout=10)
    assert not _health(port)
    # No worker is left behind: a new job stays queued.
    orphan_check = enqueue(project, "ping")
    time.sleep(3)
    assert job_row(project, orphan_check).status == JobStatus.QUEUED


def test_streamlit_flags_carry_the_repository_config_wherever_serve_starts() -> None:
    from labeller.serving import streamlit_flags

    flags = streamlit_flags()
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    assert pairs["--server.enableXsrfProtection"] == "true"
    assert pairs["--server.fileWatcherType"] == "none"
    assert pairs["--theme.primaryColor"] == "#3558d4"
    assert pairs["--server.maxUploadSize"] == "1024"
