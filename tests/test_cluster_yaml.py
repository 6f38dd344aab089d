"""cluster.yaml is a valid Ray cluster-launcher config, checked the way `ray up` checks it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_json_schema(cluster: dict) -> None:
    jsonschema.validate(cluster, json.loads(SCHEMA.read_text()))


def test_cluster_yaml_passes_ray_up_validation(cluster: dict) -> None:
    # `ray up` fills in the provider's defaults, then validates (schema, head type, bounds).
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "ray.head.default" in types
    assert types["ray.head.default"]["max_workers"] == 0
    workers = types["ray.worker.cpu"]
    assert 0 <= workers["min_workers"] <= workers["max_workers"] <= prepared["max_workers"]


def test_cluster_yaml_starts_ray_with_token_auth_and_installs_the_project(cluster: dict) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in cluster[key]), key
    setup = " ".join(cluster["setup_commands"])
    assert "torch==2.13.0" in setup and "pip install -e ~/sepsis-rl" in setup
    assert "~/.ray/auth_token" in setup
    assert cluster["file_mounts"] == {"~/sepsis-rl": "."}


def test_validation_rejects_what_ray_up_rejects(cluster: dict) -> None:
    unknown_head = copy.deepcopy(cluster)
    unknown_head["head_node_type"] = "ray.head.missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(unknown_head))
    too_many = copy.deepcopy(cluster)
    too_many["available_node_types"]["ray.worker.cpu"]["min_workers"] = 20
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(too_many))
    float_resources = copy.deepcopy(cluster)
    float_resources["available_node_types"]["ray.worker.cpu"]["resources"] = {"CPU": 1.5}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(float_resources))
