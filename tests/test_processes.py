"""Test process hygiene: a server test that fails still leaves no process behind."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from processes import ENV, READY_SECONDS

INNER_TEST = '''
import sys
from processes import processes  # noqa: F401

CHILD = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \\
        "print('listening', flush=True); time.sleep(600)"


def test_a_server_test_that_fails(processes, tmp_path_factory):
    server = processes.start(sys.executable, "-c", CHILD, name="fake-server")
    server.wait_until(lambda: "listening" in server.output(), "the 'listening' line")
    with open(PIDS, "w") as out:
        out.write(str(server.pid))
    raise AssertionError("deliberate failure while the server runs")
'''


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_a_failing_server_test_leaves_no_process(tmp_path):
    pids = tmp_path / "pids.txt"
    (tmp_path / "test_inner.py").write_text(f"PIDS = {str(pids)!r}\n" + textwrap.dedent(INNER_TEST))
    tests_dir = str(Path(__file__).parent)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([tests_dir, ENV.get("PYTHONPATH", "")])}
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=READY_SECONDS)  # fmt: skip
    assert inner.returncode == 1 and "deliberate failure while the server runs" in inner.stdout, inner.stdout + inner.stderr
    server = int(pids.read_text())
    assert not running(server)  # the server the failing test started
    assert group_members(server) == []  # and the child it started in its process group
