"""cluster.yaml is a valid Ray autoscaler config, secure by default (schema check only, no cloud)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_autoscaler_schema():
    import json

    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the file as written: no unknown or mistyped field
    filled = prepare_config(config)  # then what `ray up` does: fill Ray's defaults, validate
    validate_config(filled)
    assert filled["head_node_type"] in filled["available_node_types"]


def test_cluster_scales_from_zero_and_has_gpu_nodes_for_the_paper_runs():
    types = _config()["available_node_types"]
    workers = {k: v for k, v in types.items() if k != "head"}
    assert all(v["min_workers"] == 0 for v in workers.values())
    instance = {v["node_config"]["InstanceType"] for v in workers.values()}
    assert {"p5.48xlarge", "p4de.24xlarge"} <= instance  # 8 x 80 GB nodes for 70B full-parameter


def test_auth_on_and_dashboard_not_public():
    config = _config()
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    ports = [p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]]
    assert ports == [22]
    text = (REPO / "cluster.yaml").read_text()
    assert "hf_" not in text.lower().replace("hf_token", "")  # no secrets in the file
