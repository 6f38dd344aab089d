"""Real Ray clusters on this machine (loopback only): `ray job submit` and a lost second node.

Each node is a `ray start --block` process of its own, with its own temp dir and ports; the test
stops exactly the processes it started (that process and its descendants, by PID), never
`ray stop`, which would stop every Ray on the machine. Token auth is on, with a token made for
the test and passed through RAY_AUTH_TOKEN to the nodes and the CLI alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # The head declares a silent node dead after 3 missed 1-s health checks (default 5 x 3 s).
        RAY_health_check_period_ms="1000",
        RAY_health_check_failure_threshold="3",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


class LocalNode:
    """One Ray node started with `ray start --block` on 127.0.0.1; `kill()` stops only it."""

    def __init__(
        self, args: list[str], temp_dir: Path, env: dict[str, str], node_ip: str = "127.0.0.1"
    ) -> None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        self.log = (temp_dir / "ray_start.log").open("w")
        cmd = [
            RAY, "start", "--block", f"--node-ip-address={node_ip}", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            *args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._known: dict[int, str] = {}  # pid -> start time, so a reused pid is never killed

    def pids(self) -> set[int]:
        """PIDs of the `ray start` process and all its descendants seen so far and still alive
        (remembered, so workers reparented after a crash are still stopped)."""
        table = _proc_table()
        frontier = [self.proc.pid] if self.proc.pid in table else []
        seen: set[int] = set()
        while frontier:
            pid = frontier.pop()
            seen.add(pid)
            self._known.setdefault(pid, table[pid][1])
            frontier += [c for c, (ppid, _) in table.items() if ppid == pid and c not in seen]
        return {pid for pid, start in self._known.items() if table.get(pid, (0, None))[1] == start}

    def kill(self) -> None:
        for _ in range(3):  # processes may still be spawning children while we kill
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1)
        self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()


def wait_for_dashboard(port: int, node: LocalNode, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert node.proc.poll() is None, f"ray start exited: see {node.log.name}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:  # 401 without the token: the server is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"dashboard on port {port} not up after {timeout_s} s")


def wait_for_nodes(gcs: str, env: dict[str, str], count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            [RAY, "status", f"--address={gcs}"], env=env, capture_output=True, text=True
        ).stdout
        if out.count("node_") >= count:
            return
        time.sleep(2)
    raise TimeoutError(f"{count} nodes not up after {timeout_s} s")


@pytest.fixture()
def short_dir():
    """A short temp dir for Ray sessions (Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="srl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def head(short_dir: Path):
    """A head node on 127.0.0.1 with the dashboard (job server); 2 CPUs, one `runner_slot`."""
    token = secrets.token_hex(32)
    env = cluster_env(token)
    gcs_port, dash_port = free_port(), free_port()
    node = LocalNode(
        [
            "--head",
            f"--port={gcs_port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            f"--ray-client-server-port={free_port()}",
            '--resources={"runner_slot": 1}',
        ],  # fmt: skip
        short_dir / "head",
        env,
    )
    try:
        wait_for_dashboard(dash_port, node)
        yield {
            "env": env,
            "gcs": f"127.0.0.1:{gcs_port}",
            "address": f"http://127.0.0.1:{dash_port}",
            "node": node,
        }
    finally:
        node.kill()


def submit(head: dict, entrypoint: list[str]) -> str:
    """`ray job submit --working-dir .` from the repo root, without waiting; returns the job id."""
    job_id = f"sepsis_rl_test_{secrets.token_hex(4)}"
    subprocess.run(
        [RAY, "job", "submit", f"--address={head['address']}", f"--submission-id={job_id}",
         "--working-dir", ".", "--no-wait", "--", *entrypoint],
        cwd=REPO, env=head["env"], check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return job_id


def job_status(head: dict, job_id: str) -> str | None:
    done = subprocess.run(
        [RAY, "job", "status", f"--address={head['address']}", job_id],
        env=head["env"], capture_output=True, text=True,
    )  # fmt: skip
    out = done.stdout + done.stderr  # the CLI logs the status line to stderr
    final = re.search(r"Job '[^']+' (succeeded|failed|stopped)", out)
    return final.group(1).upper() if final else None


def wait_for_job(head: dict, job_id: str, timeout_s: float = 900) -> tuple[str | None, str]:
    """Poll until the job ends; returns (final status or None on timeout, its logs)."""
    deadline = time.monotonic() + timeout_s
    status = None
    while status is None and time.monotonic() < deadline:
        time.sleep(3)
        status = job_status(head, job_id)
    logs = subprocess.run(
        [RAY, "job", "logs", f"--address={head['address']}", job_id],
        env=head["env"], capture_output=True, text=True,
    )  # fmt: skip
    return status, logs.stdout + logs.stderr


TRAIN_ARGS = [
    "--set", "num_cpus_per_env_runner=0.5", "--set", "min_sample_timesteps_per_iteration=500",
    "--set", "num_steps_sampled_before_learning_starts=500", "--set", "evaluation_episodes=5",
    "--set", "evaluation_interval=2", "--set", "training_intensity=2",
]  # fmt: skip


@pytest.mark.slow
def test_job_submit_trains_and_writes_a_checkpoint(head: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    job_id = submit(
        head,
        ["sepsis-rl", "train", "--env", "CartPole-v1", "--out", str(out), "--env-steps", "1500",
         "--num-env-runners", "1", *TRAIN_ARGS],
    )  # fmt: skip
    status, logs = wait_for_job(head, job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    assert (out / "checkpoints" / "last" / "rllib_checkpoint.json").exists()
    assert (out / "checkpoints" / "last" / "replay_buffer.pkl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] >= 1500


def _healthy_runners(run_dir: Path) -> list[int]:
    """The healthy-env-runner count of each iteration so far (metrics.csv's last column)."""
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)[1:] if path.is_file() else []
    return [int(line.split(",")[-1]) for line in lines if line.endswith("\n")]  # whole rows only


@pytest.mark.slow
def test_training_survives_losing_a_second_node(
    head: dict, short_dir: Path, tmp_path: Path
) -> None:
    """Two env runners, one on each node (each node offers one `runner_slot`, each runner needs
    one); node 2 is killed mid-run; the job still finishes its budget on the head's runner."""
    # `ray start --address` refuses to join with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with 1
    # it replaces "127.0.0.1" (in --address and --node-ip-address) by the machine's default
    # interface. Addresses Ray does not call "localhost" keep it on loopback: the node is
    # 127.0.0.2 and reaches the head's GCS (bound to 127.0.0.1) as [::ffff:127.0.0.1].
    gcs_port = head["gcs"].rsplit(":", 1)[1]
    second = LocalNode(
        [f"--address=[::ffff:127.0.0.1]:{gcs_port}", "--num-cpus=1",
         '--resources={"runner_slot": 1}'],
        short_dir / "node2",
        {**head["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
        node_ip="127.0.0.2",
    )  # fmt: skip
    try:
        wait_for_nodes(head["gcs"], head["env"], count=2)
        pid_dir, out = tmp_path / "pids", tmp_path / "run"
        job_id = submit(
            head,
            ["sepsis-rl", "train", "--env", "tests.test_rl_toyenv:SignGame-v0", "--out", str(out),
             "--time-budget", "60", "--num-env-runners", "2", *TRAIN_ARGS,
             "--set", 'custom_resources_per_env_runner={"runner_slot": 1}',
             "--set", "delay_between_env_runner_restarts_s=1",
             "--set", "env_kwargs=" + json.dumps({"pid_dir": str(pid_dir)})],
        )  # fmt: skip
        deadline = time.monotonic() + 300
        runner_pids: set[int] = set()
        on_node2: set[int] = set()
        while not (on_node2 and runner_pids - on_node2) and time.monotonic() < deadline:
            time.sleep(1)  # until a runner runs on each node
            runner_pids = {int(p.name) for p in pid_dir.glob("*")}
            on_node2 = runner_pids & second.pids()
        assert on_node2, "no env runner started on the second node"
        assert "Local node IP: 127.0.0.2" in _plain(short_dir / "node2" / "ray_start.log")
        assert runner_pids - on_node2, "no env runner started on the head"
        while not _healthy_runners(out) and time.monotonic() < deadline:
            time.sleep(1)  # the first iteration, sampled on both nodes
        assert job_status(head, job_id) is None, "the job ended before node 2 could be killed"
        second.kill()
        status, logs = wait_for_job(head, job_id)
        assert status == "SUCCEEDED", logs[-3000:]
        # A time budget, so the run outlasts noticing the dead node (a few seconds with the head's
        # health checks): the runner on node 2 was lost, and training went on without it.
        healthy = _healthy_runners(out)
        assert healthy[0] == 2 and 1 in healthy, healthy
        assert healthy[-1] == 1, healthy
    finally:
        second.kill()


def _plain(log: Path) -> str:
    """A log without ANSI colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())
