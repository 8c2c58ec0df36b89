"""No Docker engine runs here: check the cluster YAML against Ray's schema and the pins by text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import ray
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([\w.]+)$", dep)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


def test_cluster_yaml_validates_against_rays_schema():
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load((REPO / "docker" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    assert any("g5" in n["node_config"]["InstanceType"] for n in nodes.values())  # a GPU worker
    head_commands = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_commands
    assert "RAY_AUTH_MODE=token" in head_commands
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_on_premises_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "docker" / "cluster-local.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"] == "HEAD_IP"
    assert "RAY_AUTH_MODE=token" in " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "VENV_BIN" in config["setup_commands"][0]  # bench/ray_submit_local.sh fills these in


def test_dockerfile_installs_the_same_pins():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    pins = _pins()
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-py(\d)(\d+)-gpu$", dockerfile, re.M)
    assert base, "the base must be a pinned rayproject/ray:<version>-py3XX-gpu image"
    assert base.group(1) == pins["ray"] == ray.__version__
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(v) for v in requires.removeprefix(">=").split("."))
    assert (int(base.group(2)), int(base.group(3))) >= minimum
    # Dependencies from pyproject.toml alone, in a layer before any source is copied; then the project.
    deps_layer = dockerfile.index("pip install --no-cache-dir -r /tmp/requirements.txt")
    assert dockerfile.index("COPY --chown=ray:users pyproject.toml ./") < deps_layer
    assert "['project']['dependencies']" in dockerfile[:deps_layer]
    sources = ("manifests", "pipeline", "train")
    assert deps_layer < min(dockerfile.index(f"COPY --chown=ray:users {d} ") for d in sources)
    assert re.search(r"pip install --no-cache-dir --no-deps \.( |$)", dockerfile, re.M)
    for name, version in re.findall(r"([A-Za-z0-9_-]+)==([\w.]+)", dockerfile):
        assert pins.get(name.lower()) == version, f"Dockerfile pins {name}=={version}"
    assert {"torch", "torchvision", "timm", "effdet", "webdataset", "ray"} <= set(pins)
