"""`sepsis-rl serve`: a trained policy behind HTTP (Ray Serve with a FastAPI ingress).

* `app`: the FastAPI app, the Serve deployment `PolicyServer` and the application builder
  `build` (the endpoints are listed in its docstring);
* `service`: what each endpoint answers, without the web layer (`PolicyService`);
* `stay`, `what_if`: a whole uploaded ICU stay hour by hour, and the simulator's paired courses;
* `access`: the optional bearer token and the request-body limit; `problems`: the 422 shape;
* `web/`: the page served at `/`.
"""
