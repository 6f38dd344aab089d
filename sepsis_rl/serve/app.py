"""`sepsis-rl serve`: a trained policy behind a Ray Serve application with a FastAPI ingress.

Each replica (`PolicyServer`) loads the policy, and the classifier if given, once, in its
constructor (`sepsis_rl.serve.service.PolicyService`), and answers:

| Method, path | Answer |
|---|---|
| `GET /` | the web page (`sepsis_rl/serve/web/index.html`; its files under `/static/`) |
| `GET /docs`, `GET /openapi.json` | the API's description (Swagger UI, OpenAPI) |
| `GET /v1/health` | `{"status": "ok", "pid": ...}` (the replica's process id) |
| `GET /v1/model` | which policy answers, its actions, and every vital a request may give |
| `POST /v1/recommend` | the action for one patient's vitals (JSON), with every action's value |
| `POST /v1/stay` | every hour of an uploaded PhysioNet `.psv` stay: risk, action, protocol action |
| `POST /v1/what-if` | the simulator's paired courses of one patient under three policies |

Errors: 422 `{"detail": [{"field", "line", "column", "msg"}, ...]}` for any content the API
refuses (`sepsis_rl.serve.problems`); 413 for a body over `MAX_BODY_BYTES`; 401 for a `/v1/`
request without the token, when the server was started with one. `/`, `/static/*`, `/docs`,
`/openapi.json` and `GET /v1/health` stay open (`sepsis_rl.serve.access`). Nothing a client
sends is unpickled; a request that fails inside a handler is answered 500 and the replica goes
on serving.

Start it with `sepsis-rl serve --checkpoint ...` (`sepsis_rl.cli.serve`), or on a cluster with
`serve deploy serve_config.yaml` / `serve run serve_config.yaml`, which call `build`.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations as
# objects, and Serve ships the deployment class by value, without this module's namespace to
# resolve annotation strings in.
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, create_model
from ray import serve
from ray.serve import Application
from starlette.concurrency import run_in_threadpool

from sepsis_env.env import OBS_HIGH, OBS_INDEX, OBS_LOW, OBS_NAMES, OBS_UNITS
from sepsis_rl.serve import access
from sepsis_rl.serve.problems import InputError, Problem
from sepsis_rl.serve.what_if import MAX_EPISODES, MIN_EPISODES
from training.rl.recommend import VITALS

WEB_DIR = Path(__file__).resolve().parent / "web"
"""The web page's files (index.html, app.js, style.css), shipped as package data."""


MAX_BODY_BYTES = 1_000_000
"""Largest request body accepted (413 above it). A PhysioNet stay of the longest length in the
release (336 h) is about 60 kB as a `.psv` file."""


REPLICA_CPUS = 0.5
"""CPUs Ray reserves for each replica: a forward pass of a small network and a few hundred
simulated courses need less than a core; two replicas then share one."""


MAX_ONGOING_REQUESTS = 128
"""Requests a replica takes at once. Serve's default (5) queues most of a small burst, and when
every replica is full Serve's router retries with a growing back-off: with 32, 50 concurrent
clients got 60-80 requests/s and a p99 of 3 s (`benchmarks/bench_serve.py`), with 128 about 300
requests/s and 0.3 s. The handlers of the small questions are `async`: they take well under a
millisecond and need no thread pool."""


QUIET_LOGGING = {"enable_access_log": False}
"""Serve's logging of the replicas and proxy: no line per request, which cost about 10% of the
throughput at one client (`benchmarks/bench_serve.py`: 187 against 166 requests/s). Errors and
warnings are still logged; `serve_config.yaml` can turn the access log back on."""


APP_NAME = "sepsis"
"""The Serve application's name (`serve status`, `serve shutdown`)."""


# --- Request bodies -------------------------------------------------------------------------------
def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a number")
    return value


Number = Annotated[float, BeforeValidator(_refuse_bool), Field(allow_inf_nan=False)]


def _vital_field(name: str) -> tuple[Any, Any]:
    i = OBS_INDEX[name]
    bounds = {"ge": float(OBS_LOW[i]), "le": float(OBS_HIGH[i])}
    description = f"{OBS_UNITS[i]}, {OBS_LOW[i]:g} to {OBS_HIGH[i]:g}"
    if name in VITALS:
        return Number, Field(..., description=description + " (required)", **bounds)
    return Number | None, Field(None, description=description + " (optional)", **bounds)


Vitals = create_model(
    "Vitals",
    __config__=ConfigDict(extra="forbid"),
    __doc__="One patient's state by PhysioNet names (`training.rl.recommend.VITALS` required, "
    "the treatment flags and hour counters optional: none running by default).",
    **{name: _vital_field(name) for name in OBS_NAMES},
)


class WhatIfRequest(BaseModel):
    """A patient and how many paired simulated courses to run per policy."""

    model_config = ConfigDict(extra="forbid")
    patient: Vitals  # type: ignore[valid-type]
    episodes: int = Field(200, ge=MIN_EPISODES, le=MAX_EPISODES)
    seed: int = Field(0, ge=0, le=2**31 - 1)


def _given(body: BaseModel) -> dict[str, float]:
    return body.model_dump(exclude_none=True)


# --- The FastAPI app: middleware, error shapes, page ------------------------------------------
app = FastAPI(
    title="sepsis-rl",
    summary="A trained sepsis treatment policy, its simulator and (optionally) a sepsis "
    "classifier. Research software: not for clinical use.",
    version="1",
)
# Starlette runs the last added middleware first: the token is checked before the body is read.
app.add_middleware(access.BodyLimit, max_bytes=MAX_BODY_BYTES)
app.add_middleware(access.BearerToken)


def _problem_of(error: dict[str, Any], body: Any, path: str) -> Problem:
    """One pydantic error of a request to `path` as a Problem with the field by name and a
    message with units."""
    loc = [part for part in error.get("loc", ()) if part != "body"]
    kind, value = error.get("type"), error.get("input")
    if kind == "json_invalid":
        position = loc[0] if loc and isinstance(loc[0], int) else 0
        text = body if isinstance(body, str) else ""
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        reason = error.get("ctx", {}).get("error", "invalid")
        return Problem(None, f"the body is not valid JSON: {reason}", line, column)
    field = ".".join(str(part) for part in loc) or None
    name = str(loc[-1]) if loc else ""
    if kind == "missing":
        if field == "file":
            return Problem(field, "no file: send the .psv as the multipart form field `file`")
        hint = f" (required: {', '.join(VITALS)})" if name in VITALS else ""
        return Problem(field, f"{field} is missing{hint}")
    if kind == "extra_forbidden":
        about_vitals = not path.endswith("/what-if") or len(loc) > 1
        known = OBS_NAMES if about_vitals else tuple(WhatIfRequest.model_fields)
        return Problem(
            field, f"{field} is not a field this endpoint knows (known: {', '.join(known)})"
        )
    if kind in ("greater_than_equal", "less_than_equal") and name in OBS_INDEX:
        i = OBS_INDEX[name]
        unit = OBS_UNITS[i]
        return Problem(
            field,
            f"{field}: {value} {unit} is impossible (allowed {OBS_LOW[i]:g} to {OBS_HIGH[i]:g} "
            f"{unit})",
        )
    if kind in ("greater_than_equal", "less_than_equal"):
        ctx = error.get("ctx", {})
        bound = f"at least {ctx['ge']}" if "ge" in ctx else f"at most {ctx.get('le')}"
        return Problem(field, f"{field}: {value} is out of range; give {bound}")
    if kind == "int_from_float":
        return Problem(field, f"{field}: {value!r} is not a whole number")
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return Problem(field, f"{field}: {value!r} is not a number")
    if kind == "finite_number":
        return Problem(field, f"{field}: not a finite number; give a measured value")
    if kind == "value_error":
        reason = str(error.get("ctx", {}).get("error", error.get("msg")))
        return Problem(field, f"{field}: {reason}")
    return Problem(field, f"{field}: {error.get('msg')}" if field else str(error.get("msg")))


def _unprocessable(problems: list[Problem]) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [p.to_dict() for p in problems]})


@app.exception_handler(RequestValidationError)
async def _validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    path = request.url.path
    return _unprocessable([_problem_of(error, exc.body, path) for error in exc.errors()])


@app.exception_handler(InputError)
async def _input_refused(request: Request, exc: InputError) -> JSONResponse:
    return _unprocessable(exc.problems)


app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")


@app.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The web page."""
    return FileResponse(WEB_DIR / "index.html")


# --- The Serve deployment -----------------------------------------------------------------------
@serve.deployment(
    ray_actor_options={"num_cpus": REPLICA_CPUS},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    logging_config=QUIET_LOGGING,
)
@serve.ingress(app)
class PolicyServer:
    """One replica: the policy (and classifier) loaded once, answering the `/v1/` endpoints."""

    def __init__(
        self, checkpoint: str, classifier: str | None = None, token: str | None = None
    ) -> None:
        import torch

        from sepsis_rl.serve.service import PolicyService

        torch.set_num_threads(1)  # Ray reserves a fraction of a core per replica
        self.service = PolicyService(checkpoint, classifier)
        access.configure(token)

    @app.get("/v1/health")
    async def health(self) -> dict[str, Any]:
        """Liveness of this replica (open even with a token)."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """Which policy answers, its actions and every vital a request may give, with its unit,
        bounds, whether it is required and the range the policy was trained on."""
        return self.service.model()

    @app.post("/v1/recommend")
    async def recommend(self, patient: Vitals) -> dict[str, Any]:  # type: ignore[valid-type]
        """The learned policy's action for one patient, every action's value (Q-value or
        probability), the clinician protocol's action and warnings for values outside the
        training range."""
        return self.service.recommend(_given(patient))

    @app.post("/v1/stay")
    async def stay(self, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """Every hour of one PhysioNet `.psv` stay (multipart field `file`): the classifier's
        risk from the hours so far (null without `--classifier`), the learned and the protocol
        action, the vitals used. Missing vitals are carried forward (named in `warnings`)."""
        content = await file.read()
        return await run_in_threadpool(self.service.stay, content, file.filename)

    @app.post("/v1/what-if")
    def what_if(self, request: WhatIfRequest) -> dict[str, Any]:
        """The simulator's answer (not a clinical prediction): survival with its 95 % interval
        and the median course of MAP, lactate and heart rate under the learned policy, the
        clinician protocol and no treatment, over paired simulated courses of this patient."""
        return self.service.what_if(_given(request.patient), request.episodes, request.seed)

    def check_health(self) -> None:
        """Serve's periodic health check: the policy is loaded in the constructor, so a
        constructed replica is healthy."""


class ServeArgs(BaseModel):
    """The arguments of `build`: `serve run sepsis_rl.serve.app:build checkpoint=... replicas=2`
    or the `args:` of an application in `serve_config.yaml`."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    """A run's checkpoints/best or checkpoints/last, as seen by the replicas' nodes."""
    classifier: str | None = None
    """The `model` folder `sepsis-rl classify` wrote (hourly risk on /v1/stay), or none."""
    token_file: str | None = None
    """A file holding the bearer token /v1/ requests need, or none (open API)."""
    replicas: PositiveInt = 1
    """Replicas of the deployment."""
    num_cpus: float = Field(REPLICA_CPUS, gt=0)
    """CPUs reserved per replica (fractional is fine)."""


def build(args: ServeArgs) -> Application:
    """The Serve application for `args` (Serve's application builder: it validates a plain dict
    of arguments into `ServeArgs`). The token file is read here, where the application is
    built; replicas receive the token itself."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    token = access.read_token(args.token_file) if args.token_file else None
    deployment = PolicyServer.options(
        num_replicas=args.replicas, ray_actor_options={"num_cpus": args.num_cpus}
    )
    return deployment.bind(args.checkpoint, args.classifier, token)
