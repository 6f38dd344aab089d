"""How fast does `sepsis-rl serve` answer? Concurrent clients on loopback against the cold start.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python benchmarks/bench_serve.py \
        [--checkpoint RUN/checkpoints/best] [--clients 1,10,50] [--requests 200] \
        [--replicas 1,2] [--ingress haproxy,proxy]

For each ingress (`sepsis_rl.serve.ingress`: HAProxy straight to the replicas, the default; or
Serve's Python proxy) and replica count, the real server is started as a user starts it
(`sepsis-rl serve --checkpoint CK --port P --replicas N --ingress I`, in its own process) and,
once `/v1/health` answers, 1, 10 and 50 concurrent clients (one asyncio process, aiohttp, a
keep-alive connection each) send `--requests` `POST /v1/recommend` each, one after another, for
the same patient. Printed per row: requests/s, latency p50/p99 (ms, from sending to the whole
answer read), and the CPU each part spent per request (the replicas, the ingress, the rest of
Ray, the client: all share the 2 cores). Beside them in the same run: the same question answered
by `sepsis-rl recommend --json` (a new process: the cold start a clinician waits for without a
server), and the floor, the policy's forward pass alone in this process
(`training.rl.policy.load_policy(...).q_values`).

Targets (issue 17): p99 <= 50 ms at 10 concurrent clients with one replica; throughput grows
with `--replicas 2`. Without `--checkpoint` a small DQN is trained first (`--train-s`, seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "sepsis_rl.cli"]
PATIENT = {
    "HR": 112, "O2Sat": 91, "SBP": 92, "DBP": 52, "MAP": 65, "Resp": 26, "Temp": 38.4,
    "Lactate": 3.1, "Age": 67,
}  # fmt: skip
"""A septic-looking patient (PhysioNet names and units: bpm, %, mmHg, /min, degC, mmol/L, y)."""
P99_GOAL_MS = 50.0
"""Issue 17: p99 latency at 10 concurrent clients with one replica."""
STARTUP_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_checkpoint(out: Path, budget_s: float) -> Path:
    """A DQN trained on SepsisEnv with the defaults for `budget_s` seconds (`sepsis-rl train`)."""
    subprocess.run(
        [*CLI, "train", "--out", str(out), "--time-budget", str(budget_s)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out / "checkpoints" / "best"


class Server:
    """`sepsis-rl serve` in its own process, stopped with SIGTERM (Serve and Ray shut down)."""

    def __init__(self, checkpoint: Path, replicas: int, ingress: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop)
        command = [*CLI, "serve", "--checkpoint", str(checkpoint), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--replicas", str(replicas), "--ingress", ingress],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        start = time.monotonic()
        while time.monotonic() - start < STARTUP_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"sepsis-rl serve exited {self.process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2) as answer:
                    if answer.status == 200:
                        self.startup_s = time.monotonic() - start
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"sepsis-rl serve did not answer in {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds used so far by the server's processes (`root` and everything below it), by
    role: the replicas, the ingress (HAProxy, or Serve's proxy actor) and the rest of Ray."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stats[int(entry)] = (argv0, (int(fields[11]) + int(fields[12])) / tick)
    roles = {"replicas": 0.0, "ingress": 0.0, "rest of Ray": 0.0}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        name, seconds = stats.get(pid, ("", 0.0))
        if "ServeReplica" in name:
            roles["replicas"] += seconds
        elif "haproxy" in name or "ProxyActor" in name:
            roles["ingress"] += seconds
        else:
            roles["rest of Ray"] += seconds
    return roles


async def load(url: str, clients: int, requests: int) -> tuple[np.ndarray, float, int]:
    """Latencies (s) of `clients` x `requests` POSTs, the wall time, and the count of errors."""
    import aiohttp

    body = json.dumps(PATIENT).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in range(requests):
            sent = time.perf_counter()
            async with session.post(f"{url}/v1/recommend", data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # warm the connection pool and the replica
            async with session.post(f"{url}/v1/recommend", data=body, headers=headers) as r:
                await r.read()
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - start
    return np.array(latencies), wall, errors


def measure(server: Server, ingress: str, replicas: int, clients: int, requests: int) -> dict:
    """One row: `clients` x `requests` against `server`, with the CPU each role spent."""
    cpu, before = time.process_time(), cpu_by_role(server.process.pid)
    latencies, wall, errors = asyncio.run(load(server.url, clients, requests))
    cpu, after = time.process_time() - cpu, cpu_by_role(server.process.pid)
    n = len(latencies)
    row = {
        "ingress": ingress, "replicas": replicas, "clients": clients, "requests": n,
        "errors": errors, "rps": n / wall,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "client_cpu": cpu / wall,
        "cpu_ms_per_request": {k: 1000 * (after[k] - before[k]) / n for k in after},
    }  # fmt: skip
    per = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_request"].items())
    print(f"   {clients:>3} clients: {row['rps']:7.1f} requests/s, p50 {row['p50_ms']:6.1f} ms, "
          f"p99 {row['p99_ms']:6.1f} ms, {errors} errors; CPU ms per request: {per}, client "
          f"{1000 * cpu / n:.2f}", flush=True)  # fmt: skip
    return row


def cold_start(checkpoint: Path, repeats: int) -> list[float]:
    """Seconds of `sepsis-rl recommend --json` (a new process each time), `repeats` times."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(PATIENT, f)
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run(
            [*CLI, "recommend", "--checkpoint", str(checkpoint), "--patient", f.name, "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.monotonic() - start)
    os.unlink(f.name)
    return times


def forward_pass_floor(checkpoint: Path, repeats: int = 2000) -> float:
    """Median seconds of the policy's Q-values for one patient, in this process (the floor)."""
    import torch

    from training.rl.policy import load_policy
    from training.rl.recommend import patient_observation

    torch.set_num_threads(1)
    policy = load_policy(checkpoint)
    obs = patient_observation(PATIENT)[None]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.q_values(obs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a SepsisEnv run's checkpoints/best")
    parser.add_argument("--train-s", type=float, default=30.0, help="without --checkpoint")
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument(
        "--ingress", default="haproxy,proxy", help="sepsis-rl serve --ingress values to compare"
    )
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("results/bench_serve"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    replica_counts = [int(r) for r in args.replicas.split(",")]
    ingresses = args.ingress.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"bench_serve: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{args.requests} requests per client; patient {PATIENT}", flush=True)  # fmt: skip
    checkpoint = args.checkpoint
    if checkpoint is None:
        start = time.monotonic()
        checkpoint = train_checkpoint(args.work / "dqn", args.train_s)
        print(f"trained a DQN for the benchmark in {time.monotonic() - start:.0f} s", flush=True)
    if not checkpoint.exists():
        sys.exit(f"error: {checkpoint} does not exist")

    rows = []
    for ingress in ingresses:
        for replicas in replica_counts:
            log = args.work / f"serve_{ingress}_{replicas}.log"
            server = Server(checkpoint, replicas, ingress, log)
            print(f"\nsepsis-rl serve --ingress {ingress} --replicas {replicas}: answering after "
                  f"{server.startup_s:.1f} s", flush=True)  # fmt: skip
            try:
                for n in clients:
                    rows.append(measure(server, ingress, replicas, n, args.requests))
            finally:
                server.stop()

    cold = cold_start(checkpoint, args.cold_repeats)
    floor = forward_pass_floor(checkpoint)
    print("\nthe same question, same run:")
    each = ", ".join(f"{t:.2f}" for t in cold)
    print(f"   sepsis-rl recommend (cold start, new process): median "
          f"{statistics.median(cold):.2f} s ({each} s)")  # fmt: skip
    print(f"   the policy's forward pass alone (floor): {1000 * floor:.3f} ms")

    print(f"\n{'ingress':>8} {'replicas':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'x cold start':>13}")  # fmt: skip
    for r in rows:
        speedup = statistics.median(cold) / (r["p50_ms"] / 1000)
        print(f"{r['ingress']:>8} {r['replicas']:>8} {r['clients']:>7} {r['rps']:>8.1f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {speedup:>12.0f}x")  # fmt: skip
    print()
    for ingress in ingresses:
        mine = [r for r in rows if r["ingress"] == ingress]
        at10 = [r for r in mine if r["replicas"] == 1 and r["clients"] == 10]
        if at10:
            p99 = at10[0]["p99_ms"]
            verdict = "met" if p99 <= P99_GOAL_MS else "NOT met"
            print(f"--ingress {ingress}: p99 at 10 clients, 1 replica: {p99:.1f} ms (target <= "
                  f"{P99_GOAL_MS:.0f} ms): {verdict}")  # fmt: skip
        if {1, 2} <= set(replica_counts):
            best = {k: max(r["rps"] for r in mine if r["replicas"] == k) for k in (1, 2)}
            verdict = "met" if best[2] > best[1] else "NOT met"
            print(f"--ingress {ingress}: throughput, best over client counts: 1 replica "
                  f"{best[1]:.1f}/s, 2 replicas {best[2]:.1f}/s: grows with replicas: "
                  f"{verdict}")  # fmt: skip
    (args.work / "results.json").write_text(
        json.dumps({"rows": rows, "cold_start_s": cold, "forward_pass_s": floor}, indent=1)
    )


if __name__ == "__main__":
    main()
