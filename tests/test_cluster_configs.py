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
