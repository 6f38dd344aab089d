"""`sepsis-rl serve`: the real app (Ray Serve, FastAPI, a tiny trained DQN checkpoint and a small
real classifier) on a free loopback port, asked over HTTP as a client would, good and bad inputs
alike; then the command line's checks, which refuse bad input before Ray starts.

The server runs with a bearer token, so every /v1/ request below sends it, except where the test
is about the token.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# Ray must bind to loopback only on these machines (see the README's Ray section).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

httpx = pytest.importorskip("httpx")

from sepsis_env.env import ACTION_NAMES, COHORT_VITALS, OBS_NAMES  # noqa: E402
from sepsis_env.policies import clinician_protocol  # noqa: E402
from training.rl.recommend import VITALS, patient_observation, recommend  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

PATIENT = {
    "HR": 112,
    "O2Sat": 93,
    "SBP": 95,
    "DBP": 55,
    "MAP": 68,
    "Resp": 24,
    "Temp": 38.5,
    "Lactate": 3.1,
    "Age": 67,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stays(tmp_path_factory) -> Path:
    """`.psv` stays of a small synthetic cohort, in the release's folder layout."""
    from data_prep.synth import generate_cohort, write_psv_files

    raw = tmp_path_factory.mktemp("serve_raw")
    write_psv_files(generate_cohort(1500, seed=5), raw)
    return raw


@pytest.fixture(scope="module")
def classifier_dir(stays, tmp_path_factory) -> Path:
    """A real classifier (logistic regression, no oversampling) on those stays: about 3 s."""
    from data_prep.prepare import prepare
    from training.classification.experiment import run_classification
    from training.classification.options import ClassifyConfig

    root = tmp_path_factory.mktemp("serve_classifier")
    prepare(stays, root / "prepared")
    config = ClassifyConfig(oversample=("none",), models=("logreg",), n_boot=100, fidelity=False)
    run_classification(root / "prepared", root / "classify", config)
    return root / "classify" / "model"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve_token") / "token"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tiny_sepsis_run: Path) -> Path:
    return tiny_sepsis_run / "checkpoints" / "last"


@pytest.fixture(scope="module")
def server(checkpoint, classifier_dir, token_file):
    """The real app on a free loopback port, with the classifier and the token, behind the
    default ingress (HAProxy to the replica's own HTTP server)."""
    from ray import serve

    from sepsis_rl.serve.app import build
    from sepsis_rl.serve.ingress import HAPROXY, local_serve, wait_until_ready

    port = _free_port()
    with local_serve("127.0.0.1", port, HAPROXY, num_cpus=2):
        args = {
            "checkpoint": str(checkpoint),
            "classifier": str(classifier_dir),
            "token_file": str(token_file),
        }
        serve.run(build(args), name="sepsis", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url)
        yield url


@pytest.fixture(scope="module")
def client(server, token_file):
    """An HTTP client sending the token."""
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(server):
    """An HTTP client without the token."""
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _problems(response) -> list[dict]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(set(p) == {"field", "line", "column", "msg"} for p in detail)
    return detail


# --- Open paths, the token -----------------------------------------------------------------------


def test_health_page_static_files_and_docs_need_no_token(anonymous):
    health = anonymous.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and isinstance(health.json()["pid"], int)
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (PROJECT_ROOT / "sepsis_rl/serve/web/index.html").read_text()
    assert anonymous.get("/static/index.html").status_code == 200
    assert anonymous.get("/docs").status_code == 200
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert {"/v1/health", "/v1/model", "/v1/recommend", "/v1/stay", "/v1/what-if"} <= set(paths)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/model"),
        ("post", "/v1/recommend"),
        ("post", "/v1/stay"),
        ("post", "/v1/what-if"),
    ],
)
def test_every_other_v1_request_needs_the_token(anonymous, client, method, path):
    # Refused before the body is read: a bad body still gets 401, not 422.
    missing = anonymous.request(method, path, json={"HR": "x"})
    wrong = anonymous.request(
        method, path, json={"HR": "x"}, headers={"Authorization": "Bearer " + "x" * 43}
    )
    assert missing.status_code == wrong.status_code == 401
    assert "Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path, json={"HR": "x"}).status_code != 401


# --- GET /v1/model --------------------------------------------------------------------------------


def test_model_names_the_policy_and_every_vital(client, checkpoint, classifier_dir):
    model = client.get("/v1/model").json()
    assert model["checkpoint"] == str(checkpoint.resolve())
    assert (model["algo"], model["env"], model["value_kind"]) == ("dqn", "SepsisEnv-v0", "q_values")
    assert model["classifier"] == str(classifier_dir.resolve())
    from sepsis_rl.common.provenance import source_commit

    assert model["commit"] == source_commit() and model["trained_at"].endswith("Z")
    assert model["actions"] == list(ACTION_NAMES)
    vitals = {v["name"]: v for v in model["vitals"]}
    assert list(vitals) == list(OBS_NAMES)
    assert {name for name, v in vitals.items() if v["required"]} == set(VITALS)
    for name, v in vitals.items():
        assert v["low"] < v["high"] and v["unit"]
        if name in COHORT_VITALS:  # the training cohort's range lies inside the possible one
            assert v["low"] <= v["trained_low"] <= v["trained_high"] <= v["high"]
        else:
            assert v["trained_low"] is None and v["trained_high"] is None


# --- POST /v1/recommend ---------------------------------------------------------------------------


def test_recommend_answers_as_the_command_line_does(client, checkpoint):
    answer = client.post("/v1/recommend", json=PATIENT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = recommend(checkpoint, PATIENT)
    assert body["action"] == expected["action"]
    assert body["action_name"] == ACTION_NAMES[body["action"]]
    assert body["values"] == pytest.approx(expected["q_values"], abs=1e-6)
    assert body["observation"] == pytest.approx(expected["observation"])
    protocol = clinician_protocol(patient_observation(PATIENT), np.random.default_rng(0))
    assert body["protocol"] == {"action": protocol, "action_name": ACTION_NAMES[protocol]}
    model = client.get("/v1/model").json()
    model.pop("vitals")
    assert body["model"] == model


def test_recommend_warns_about_values_the_policy_rarely_saw(client):
    vitals = {v["name"]: v for v in client.get("/v1/model").json()["vitals"]}
    low = vitals["MAP"]["trained_low"]
    odd = {**PATIENT, "MAP": low - 5, "DBP": low - 10}
    warnings = client.post("/v1/recommend", json=odd).json()["warnings"]
    assert any(w.startswith(f"MAP {low - 5:g} mmHg") for w in warnings), warnings
    assert client.post("/v1/recommend", json=PATIENT).json()["warnings"] == []


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"HR": None}, "HR", "missing"),
        ({"HR": "fast"}, "HR", "not a number"),
        ({"HR": True}, "HR", "not a number"),
        ({"HR": 999}, "HR", "impossible"),
        ({"Lactate": -1}, "Lactate", "mmol/L"),
        ({"heart_rate": 90}, "heart_rate", "not a field"),
        ({"SBP": 50}, "SBP", "below DBP"),  # a rule across fields (patient_observation)
        ({"oxygen": 0.5}, "oxygen", "0 (not running) or 1"),
    ],
)
def test_bad_vitals_are_refused_naming_the_field(client, change, field, words):
    patient = {**PATIENT, **change}
    patient = {k: v for k, v in patient.items() if v is not None}
    problems = _problems(client.post("/v1/recommend", json=patient))
    assert [p["field"] for p in problems] == [field]
    assert words in problems[0]["msg"]


def test_every_bad_field_is_named_at_once(client):
    patient = {**PATIENT, "HR": "x", "Age": 300, "colour": "red"}
    del patient["MAP"]
    fields = {p["field"] for p in _problems(client.post("/v1/recommend", json=patient))}
    assert fields == {"HR", "Age", "colour", "MAP"}


def test_malformed_json_is_located(client):
    body = b'{"HR": 112,\n "O2Sat": }'
    problems = _problems(
        client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    )
    assert (problems[0]["field"], problems[0]["line"], problems[0]["column"]) == (None, 2, 11)


def test_bodies_over_the_limit_are_refused_whole_or_streamed(client):
    from sepsis_rl.serve.app import MAX_BODY_BYTES

    expected = {"detail": f"request body exceeds {MAX_BODY_BYTES} bytes"}
    headers = {"content-type": "application/json"}
    whole = client.post("/v1/recommend", content=b" " * (MAX_BODY_BYTES + 1), headers=headers)
    assert (whole.status_code, whole.json()) == (413, expected)

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        for _ in range(MAX_BODY_BYTES // 50_000 + 2):
            yield b" " * 50_000

    streamed = client.post("/v1/recommend", content=chunks(), headers=headers)
    assert (streamed.status_code, streamed.json()) == (413, expected)


def test_garbage_does_not_take_the_replica_down(client):
    pid = client.get("/v1/health").json()["pid"]
    garbage = bytes(range(256)) * 8
    for path in ("/v1/recommend", "/v1/what-if", "/v1/stay"):
        for content_type in ("application/json", "multipart/form-data; boundary=x", "text/plain"):
            answer = client.post(path, content=garbage, headers={"content-type": content_type})
            assert answer.status_code in (400, 422), (path, content_type, answer.text)
    assert client.post("/v1/recommend", json=[1, 2]).status_code == 422
    assert client.get("/v1/health").json()["pid"] == pid
    assert client.post("/v1/recommend", json=PATIENT).status_code == 200


# --- POST /v1/stay --------------------------------------------------------------------------------


def _stay(stays: Path, index: int = 0) -> Path:
    return sorted(stays.rglob("*.psv"))[index]


def test_stay_scores_every_hour_with_the_hours_before_it_only(client, stays):
    psv = _stay(stays, 5)
    lines = psv.read_bytes().rstrip(b"\n").split(b"\n")
    answer = client.post("/v1/stay", files={"file": (psv.name, psv.read_bytes())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["patient"] == psv.stem and body["classifier"] is True
    hours = body["hours"]
    iculos = lines[0].split(b"|").index(b"ICULOS")
    assert [h["hour"] for h in hours] == [int(row.split(b"|")[iculos]) for row in lines[1:]]
    for h in hours:
        assert 0.0 <= h["risk"] <= 1.0
        assert h["action_name"] == ACTION_NAMES[h["action"]]
        assert h["protocol_action_name"] == ACTION_NAMES[h["protocol_action"]]
        assert set(h["vitals"]) == set(VITALS)
    # The risk of hour t does not change when the hours after t are cut off.
    cut = b"\n".join(lines[:5]) + b"\n"
    early = client.post("/v1/stay", files={"file": (psv.name, cut)}).json()["hours"]
    assert [h["risk"] for h in early] == pytest.approx([h["risk"] for h in hours[:4]])
    assert any("carried forward" in w for w in body["warnings"])


def test_stay_actions_are_the_policys_on_the_hours_vitals(client, stays, checkpoint):
    psv = _stay(stays, 2)
    hours = client.post("/v1/stay", files={"file": (psv.name, psv.read_bytes())}).json()["hours"]
    for h in hours[:3]:
        expected = recommend(checkpoint, h["vitals"])
        assert h["action"] == expected["action"]


def test_a_bad_psv_is_refused_with_its_line_and_column(client, stays):
    lines = _stay(stays).read_bytes().split(b"\n")
    fields = lines[3].split(b"|")
    fields[2] = b"warm"  # Temp, the third column
    lines[3] = b"|".join(fields)
    problems = _problems(
        client.post("/v1/stay", files={"file": ("../../p000001.psv", b"\n".join(lines))})
    )
    assert [(p["field"], p["line"], p["column"]) for p in problems] == [("file", 4, 3)]
    assert problems[0]["msg"].startswith("p000001.psv, line 4, column 3 (Temp): 'warm'")
    missing = _problems(client.post("/v1/stay", files={"other": ("x.psv", b"")}))
    assert missing[0]["field"] == "file"
    empty = _problems(client.post("/v1/stay", files={"file": ("x.psv", b"")}))
    assert empty[0]["line"] == 1


# --- POST /v1/what-if -----------------------------------------------------------------------------


def test_what_if_runs_paired_courses_of_the_same_patient(client):
    request = {"patient": PATIENT, "episodes": 60, "seed": 3}
    answer = client.post("/v1/what-if", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["caveat"].startswith("Simulator's answer (SepsisEnv), not a clinical prediction")
    assert body["episodes"] == 60 and body["horizon_hours"] == 120
    policies = body["policies"]
    assert set(policies) == {"learned", "protocol", "no_treatment"}
    for p in policies.values():
        low, high = p["survival_ci"]
        assert 0.0 <= low <= p["survival"] <= high <= 1.0
        path = p["median_path"]
        assert set(path) == {"hour", "MAP", "Lactate", "HR"}
        assert path["hour"][0] == 0 and path["hour"][-1] == body["horizon_hours"]
        assert all(len(path[k]) == len(path["hour"]) for k in path)
        assert p["in_icu"][0] == 60
    # Paired: every policy starts from the same simulated patients (same first observation).
    starts = {
        name: [p["median_path"][k][0] for k in ("MAP", "Lactate", "HR")]
        for name, p in policies.items()
    }
    assert starts["learned"] == starts["protocol"] == starts["no_treatment"]
    # Untreated, more of the same patients die than under the protocol (SepsisEnv's premise).
    assert policies["no_treatment"]["survival"] < policies["protocol"]["survival"]
    assert client.post("/v1/what-if", json=request).json() == body  # a seed gives one answer


@pytest.mark.parametrize(("episodes", "ok"), [(9, False), (10, True), (1001, False), (2.5, False)])
def test_what_if_episodes_are_bounded(client, episodes, ok):
    answer = client.post("/v1/what-if", json={"patient": PATIENT, "episodes": episodes})
    if ok:
        assert answer.status_code == 200, answer.text
    else:
        assert [p["field"] for p in _problems(answer)] == ["episodes"]


def test_what_if_names_the_patients_bad_fields(client):
    patient = {**PATIENT, "HR": "x"}
    problems = _problems(client.post("/v1/what-if", json={"patient": patient, "extra": 1}))
    assert {p["field"] for p in problems} == {"patient.HR", "extra"}


# --- The Serve config file and the command line -----------------------------------------------


def test_serve_config_file_is_valid_and_binds_to_loopback():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    )
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    module, _, name = application.import_path.partition(":")
    assert (module, name) == ("sepsis_rl.serve.app", "build")
    from sepsis_rl.serve.app import ServeArgs

    ServeArgs.model_validate(application.args)  # the args are the builder's
    deployment = application.deployments[0]
    assert deployment.ray_actor_options.num_cpus < 1


def _cli(*args: str):
    from typer.testing import CliRunner

    from sepsis_rl.cli import app

    return CliRunner().invoke(app, ["serve", *args])


def test_cli_refuses_bad_inputs_before_starting_ray(checkpoint, tmp_path):
    short = tmp_path / "short"
    short.write_text("abc\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        cases = {
            ("--checkpoint", str(tmp_path / "nope")): "does not exist",
            ("--checkpoint", str(tmp_path)): "is not a checkpoint",
            ("--checkpoint", str(checkpoint), "--classifier", str(tmp_path / "x")): "not a folder",
            ("--checkpoint", str(checkpoint), "--classifier", str(tmp_path)): "MANIFEST",
            ("--checkpoint", str(checkpoint), "--token-file", str(short)): "fewer than 16",
            ("--checkpoint", str(checkpoint), "--token-file", str(tmp_path / "t")): "cannot read",
            ("--checkpoint", str(checkpoint), "--replicas", "64"): "wait forever",
            ("--checkpoint", str(checkpoint), "--port", taken): f"--port {taken}",
        }
        for args, words in cases.items():
            result = _cli(*args)
            assert result.exit_code == 2, (args, result.output)
            assert words in result.output, (args, result.output)


def test_cli_refuses_a_classifier_whose_preprocessing_changed(checkpoint, classifier_dir):
    """The preprocessing is unpickled to score a stay: its sha256, recorded with the classifier
    (under the model folder's manifest), is checked first."""
    from data_prep.prepare import PREPROCESSING_FILE

    path = classifier_dir.parent.parent / "prepared" / PREPROCESSING_FILE
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\0")
        result = _cli("--checkpoint", str(checkpoint), "--classifier", str(classifier_dir))
        assert result.exit_code == 2, result.output
        assert "changed since the classifier" in " ".join(result.output.split()), result.output
    finally:
        path.write_bytes(original)


def _descendants(pid: int) -> set[int]:
    """`pid` and every process below it (Ray's raylet, workers and HAProxy included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, ()))
    return found


def _listening(pids: set[int]) -> dict[str, set[str]]:
    """The TCP addresses `pids` listen on, by process name (from /proc, as `ss -ltnp` does)."""
    inodes: dict[str, str] = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = os.path.basename(argv[0].decode().split(" ")[0])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = name
        except OSError:
            continue
    found: dict[str, set[str]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            # /proc/net/tcp*: the address in 32-bit words, each in host (little-endian) order
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
            if width == 8:
                host = ".".join(str(b) for b in raw)
            elif raw[:12] == bytes(10) + b"\xff\xff":  # an IPv4-mapped IPv6 address
                host = ".".join(str(b) for b in raw[12:])
            else:
                host = "::" if raw == bytes(16) else raw.hex()
            found.setdefault(inodes[fields[9]], set()).add(f"{host}:{int(port, 16)}")
    return found


RAY_GRPC_ON_EVERY_INTERFACE = "ServeReplica"
"""Ray Serve 2.60 starts a gRPC server in each replica on every interface, whatever the HTTP host
(ray-project/ray#64544; the README says so). Every other listener must be on loopback."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ingress", "stop", "code"), [("haproxy", "SIGINT", 130), ("proxy", "SIGTERM", 0)]
)
def test_the_command_serves_through_either_ingress_on_loopback_only(
    checkpoint, ingress, stop, code
):
    """Started as a user starts it, from a process that ignores SIGINT as a shell's background
    job does; Ctrl-C (SIGINT) and SIGTERM both stop it whole."""
    import signal
    import subprocess
    import sys

    port = _free_port()
    command = [sys.executable, "-m", "sepsis_rl.cli", "serve", "--checkpoint", str(checkpoint)]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--ingress", ingress],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from sepsis_rl.serve.ingress import wait_until_ready

        wait_until_ready(url, timeout_s=180)
        answer = httpx.post(f"{url}/v1/recommend", json=PATIENT, timeout=60)
        assert answer.status_code == 200, answer.text
        expected = recommend(checkpoint, PATIENT)
        assert answer.json()["action"] == expected["action"]
        listeners = _listening(_descendants(server.pid))
        if ingress == "haproxy":
            assert any(f"127.0.0.1:{port}" in a for a in listeners.get("haproxy", ())), listeners
        else:
            assert "haproxy" not in listeners, listeners
        for process, addresses in listeners.items():
            for address in addresses:
                host = address.rsplit(":", 1)[0]
                assert host == "127.0.0.1" or RAY_GRPC_ON_EVERY_INTERFACE in process, (
                    process,
                    address,
                )
    finally:
        tree = _descendants(server.pid)
        server.send_signal(getattr(signal, stop))
        output, _ = server.communicate(timeout=120)
    assert server.returncode == code, output
    assert "serving" in output and f"{url}/" in output.replace("\n", ""), output
    deadline = time.monotonic() + 30  # Ray's workers end a moment after ray.shutdown
    alive = lambda: {p for p in tree if Path(f"/proc/{p}").exists()}  # noqa: E731
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    still = alive()
    assert not still, f"processes outlived the server: {still}"


# --- Without the web layer: the service itself ------------------------------------------------


@pytest.fixture(scope="module")
def service(checkpoint):
    """The policy service without a classifier, in this process."""
    from sepsis_rl.serve.service import PolicyService

    return PolicyService(checkpoint)


def _psv(rows: list[dict[str, float]]) -> bytes:
    """A .psv stay of `rows` (PhysioNet names; NaN for the rest), hours 1, 2, ..."""
    from data_prep.schema import HEADER

    defaults = {"Age": 70, "Gender": 1, "HospAdmTime": -1, "SepsisLabel": 0}
    lines = ["|".join(HEADER)]
    for hour, row in enumerate(rows, start=1):
        values = {**defaults, "ICULOS": hour, **row}
        lines.append("|".join(str(values.get(name, "NaN")) for name in HEADER))
    return ("\n".join(lines) + "\n").encode()


def test_stay_without_a_classifier_has_no_risk_and_says_what_it_filled_in(service):
    first = {"HR": 100, "O2Sat": 95, "SBP": 110, "DBP": 60, "MAP": 75, "Resp": 20, "Temp": 37}
    answer = service.stay(_psv([first, {"HR": 104}, {**first, "SBP": 50}]), "p000042.psv")
    assert answer["patient"] == "p000042" and answer["classifier"] is False
    hours = answer["hours"]
    assert [h["risk"] for h in hours] == [None, None, None]
    assert hours[1]["vitals"]["MAP"] == 75  # carried forward from hour 1
    assert hours[0]["vitals"]["Lactate"] == 1.8  # never measured: the reference median
    # Hour 3 has SBP below DBP: no action, and a warning saying why.
    assert hours[2]["action"] is None and hours[2]["protocol_action"] is None
    assert hours[0]["action"] is not None
    warnings = " | ".join(answer["warnings"])
    assert "Lactate was never measured in the stay" in warnings
    assert "MAP was not measured at 1 of 3 hours (2)" in warnings
    assert "hour 3: SBP 50 below DBP 60 mmHg is impossible" in warnings


def test_what_if_says_when_the_simulator_cannot_start_from_the_vitals_given(service):
    answer = service.what_if({**PATIENT, "MAP": 30, "DBP": 20}, episodes=10, seed=0)
    assert any(w.startswith("MAP 30 mmHg is outside") for w in answer["warnings"])
    assert service.what_if(PATIENT, episodes=10, seed=0)["warnings"] == []
