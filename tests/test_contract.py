"""The contract package: names, URLs, manifest schema, CLI, and the import boundaries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from manifests import (
    ContractError,
    ManifestError,
    check_field,
    check_key,
    check_shard_url,
    make_key,
    read_manifest,
    shard_urls,
)
from manifests.__main__ import main as manifests_cli

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IMPORTS = {
    "manifests": {"ray", "torch", "torchvision", "timm", "effdet", "pipeline", "train"},
    "pipeline": {"train"},
    "train": {"ray", "pipeline"},
}
# orchestration only; per-record work (decode, segment, paint, encode) stays plain functions
RAY_ALLOWED_IN_PIPELINE = {"pipeline/job.py", "pipeline/repaint/job.py", "pipeline/repaint/train.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_import_directions(package):
    for path in sorted((REPO / package).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN_IMPORTS[package]
        if package == "pipeline" and path.relative_to(REPO).as_posix() not in RAY_ALLOWED_IN_PIPELINE:
            bad |= _imports(path) & {"ray"}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_importing_manifests_loads_neither_torch_nor_ray():
    code = ("import sys, manifests, manifests.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keys_and_fields():
    assert make_key("coco", 7) == "coco-00000007"
    for bad in ("a.b", "x/y", "", "naïve"):
        with pytest.raises(ContractError, match="does not match"):
            check_key(bad)
    for ok in ("jpg", "rp0.jpg", "json", "cls", "seg.png"):
        check_field(ok)
    with pytest.raises(ContractError, match="pickle format and is refused"):
        check_field("pyd")
    with pytest.raises(ContractError, match="not in the allowlist"):
        check_field("exe")


@pytest.mark.parametrize("url, message", [
    ("pipe:curl -s http://x/shard.tar", "'pipe:' URLs run shell commands"),
    ("ftp://host/shard.tar", "scheme 'ftp' is not in the allowlist"),
    ("s3cmd://bucket/x.tar", "scheme 's3cmd' is not in the allowlist"),
])
def test_shard_urls_outside_the_allowlist_are_refused(url, message):
    with pytest.raises(ContractError, match=message):
        check_shard_url(url)


def test_allowed_urls_pass():
    for url in ("shard-000000.tar", "/abs/shard.tar", "http://127.0.0.1:8000/s.tar",
                "https://host/s.tar", "file:///tmp/s.tar"):
        assert check_shard_url(url) == url


def _minimal_manifest(**changes) -> dict:
    manifest = {
        "format": "repaint-shards", "format_version": 1,
        "shards": [{"name": "shard-000000.tar", "bytes": 1, "sha256": "0", "samples": 1,
                    "first_key": "a", "last_key": "a"}],
        "totals": {"inputs": 1, "samples": 1, "skipped": 0, "shards": 1, "bytes": 1},
        "source": {"kind": "demo"}, "skipped": [], "variants": 0, "seed": 0, "seed_rule": "",
        "config": {}, "provenance": {"packages": {}},
    }
    manifest.update(changes)
    return manifest


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"format": "other"}, "format is 'other'"),
    ({"seed": None, "totals": None}, None),
    ({"shards": [{"name": "pipe:rm -rf /", "bytes": 1, "sha256": "", "samples": 1,
                  "first_key": "a", "last_key": "a"}]}, "shard #0: shard URL 'pipe:rm -rf /'"),
    ({"shards": [{"name": "x.tar"}]}, "shard #0 is missing"),
])
def test_bad_manifests_are_refused_naming_the_file(tmp_path, changes, message):
    manifest = _minimal_manifest(**changes)
    if message is None:  # a missing required field
        del manifest["seed"]
        message = "missing fields \\['seed'\\]"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_pipe_url_refused_before_anything_is_opened(tmp_path):
    path = tmp_path / "manifest.json"
    shard = {"name": "pipe:touch " + str(tmp_path / "pwned"), "bytes": 1, "sha256": "",
             "samples": 1, "first_key": "a", "last_key": "a"}
    path.write_text(json.dumps(_minimal_manifest(shards=[shard])))
    with pytest.raises(ManifestError, match="pipe:"):
        shard_urls(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cli_reports_missing_or_broken_manifest(tmp_path, capsys):
    assert manifests_cli(["verify", str(tmp_path)]) == 2
    assert "no manifest here" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{not json")
    assert manifests_cli(["show", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "manifests", "verify", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "no manifest here" in out.stderr
