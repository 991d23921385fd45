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


# The p5 / p4de node types: every network card carries an EFA interface (AWS: p5.48xlarge has 32
# cards, p4de.24xlarge 4); without them NCCL runs over TCP between nodes.
EFA_CARDS = {"p5.48xlarge": 32, "p4de.24xlarge": 4}


def _node_configs_by_instance() -> dict[str, dict]:
    return {v["node_config"]["InstanceType"]: v["node_config"] for v in _config()["available_node_types"].values()}


def test_efa_interfaces_on_every_network_card_of_the_p5_and_p4de_nodes():
    configs = _node_configs_by_instance()
    for instance, cards in EFA_CARDS.items():
        config = configs[instance]
        interfaces = config["NetworkInterfaces"]
        assert [ni["NetworkCardIndex"] for ni in interfaces] == list(range(cards)), instance
        assert all(ni["InterfaceType"] == "efa" for ni in interfaces), instance
        # the primary interface is device 0 on card 0; every other card carries device 1
        assert [ni["DeviceIndex"] for ni in interfaces] == [0] + [1] * (cards - 1), instance
        assert config["Placement"]["GroupName"], instance  # cluster placement group
        # Ray's AWS provider (_configure_subnets_and_groups_from_network_interfaces) takes subnet and
        # security group from the interfaces: each names both, and the node config names neither.
        assert all(ni["SubnetId"] and ni["Groups"] for ni in interfaces), instance
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(config), instance
        # one subnet and one group: EFA traffic stays within one security group and one AZ
        assert len({ni["SubnetId"] for ni in interfaces}) == 1, instance
        assert len({tuple(ni["Groups"]) for ni in interfaces}) == 1, instance
    assert not any("NetworkInterfaces" in c for i, c in configs.items() if i not in EFA_CARDS)


def test_setup_installs_the_tested_pins_and_keeps_nothing_from_the_image():
    commands = _config()["setup_commands"]
    installs = [c for c in commands if " pip install " in f" {c} " and "pip==" not in c]
    assert installs, "setup installs nothing"
    for cmd in installs:
        assert "-c ~/med42-ray/constraints.txt" in cmd, cmd  # the versions the test suite passed with
        assert not {"-U", "--upgrade", "--upgrade-strategy"} & set(cmd.split()), cmd
        assert cmd.startswith("~/med42-env/bin/python -m pip"), cmd  # a virtualenv of our own
        for arg in cmd.split()[4:]:  # what is not in constraints.txt is pinned here
            if not arg.startswith(("-", "~")):
                assert arg in _constraint_names() or "==" in arg, arg
    assert installs[0].endswith(" torch")  # torch first, as the README installs it
    assert any("-e ~/med42-ray" in c for c in installs)


def _constraint_names() -> set[str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {line.split("==")[0].lower() for line in lines if "==" in line and not line.startswith("#")}


def test_ray_starts_with_the_efa_environment_where_there_is_efa():
    config = _config()
    worker = " ".join(config["worker_start_ray_commands"])
    for var in ("FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "/opt/amazon/efa/lib"):
        assert var in worker
    assert worker.index("FI_PROVIDER=efa") < worker.index("ray start")


def test_every_shell_command_parses():
    import subprocess

    config = _config()
    for key in ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config[key]:
            subprocess.run(["bash", "-n", "-c", cmd], check=True)


def test_head_runs_prometheus_and_grafana_on_rays_generated_config():
    """As Ray documents: Prometheus on the session's prometheus.yml (service discovery of every
    node), Grafana on its grafana.ini (provisioning Ray's dashboards and ours), localhost only."""
    config = _config()
    setup = " ".join(config["head_setup_commands"])
    assert "prometheus/releases/download/v" in setup and "dl.grafana.com/oss/release/grafana-" in setup
    start = " ".join(config["head_start_ray_commands"])
    ray_start = start.index("ray start --head")
    prometheus = start.index("--config.file=$M/prometheus/prometheus.yml")
    grafana = start.index("--config $M/grafana/grafana.ini")
    ours = start.index("-m med42_ray.ray_metrics $M/grafana/dashboards")
    assert ray_start < ours < grafana and ray_start < prometheus  # Ray writes the files they read
    assert "M=/tmp/ray/session_latest/metrics" in start
    assert "--web.listen-address=127.0.0.1:9090" in start and "GF_SERVER_HTTP_ADDR=127.0.0.1" in start


def test_our_grafana_dashboard_is_written_where_ray_provisions_dashboards(tmp_path):
    import json
    import subprocess
    import sys

    from med42_ray.ray_metrics import DASHBOARD_FILE, TRAIN_FIGURES

    subprocess.run([sys.executable, "-m", "med42_ray.ray_metrics", str(tmp_path)], check=True)
    dashboard = json.loads((tmp_path / DASHBOARD_FILE).read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for key in TRAIN_FIGURES:
        assert f'ray_med42_train_{key}{{run=~"$run"}}' in exprs
    assert {"ray_med42_eval_questions_done", "ray_med42_eval_questions_per_s"} <= set(exprs)
