"""``labeller serve`` killed without a chance to clean up (SIGKILL) or hung up on (SIGHUP, a closed
terminal) leaves no app or worker behind: the port is freed and no job is claimed afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from db.schema import JobStatus
from labeller.serving import free_port
from tests.test_worker_serving import _health
from tests.worker_helpers import enqueue, job_row, make_project, wait_for, wait_for_status, worker_environment


def _children_of(project_root: Path) -> list[int]:
    """Processes whose command line names the project: the app (``--project ROOT``) and the worker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(project_root) in arguments and b"serve" not in arguments:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGHUP], ids=["sigkill", "sighup"])
def test_children_die_with_serve(tmp_path: Path, kill_signal: signal.Signals) -> None:
    # serve's worker heartbeats every 5 s: a timeout under 15 s would be refused (and fail healthy jobs).
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0, heartbeat_timeout_seconds=60)
    port = free_port()
    served = subprocess.Popen(
        [sys.executable, "-c", "from labeller.cli import main; main()", "serve", str(project.root), f"--port={port}"],
        env=worker_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        wait_for(lambda: _health(port), 120, "the app to answer its health check", interval=0.5)
        ping = enqueue(project, "ping")
        wait_for_status(project, ping, (JobStatus.SUCCEEDED,), timeout=60)
        children = _children_of(project.root)
        assert len(children) == 2, children  # the app and the worker
        served.send_signal(kill_signal)
        served.wait(timeout=30)
        wait_for(lambda: not _children_of(project.root), 30, "the app and the worker to exit", interval=0.5)
        assert not _health(port)
        orphan_check = enqueue(project, "ping")
        time.sleep(3)
        assert job_row(project, orphan_check).status == JobStatus.QUEUED
    finally:
        if served.poll() is None:
            served.kill()
        for pid in children:  # what the old code left behind, so that a failure does not leak processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
