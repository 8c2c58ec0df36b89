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
RAY_ALLOWED_IN_PIPELINE = {"pipeline/job.py", "pipeline/tasks.py", "pipeline/repaint/job.py",
                           "pipeline/repaint/train.py"}


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


def test_the_shard_task_module_stays_light():
    """A Ray worker imports the module of the task it runs: the shard writer's must not pull in the
    repainter (torch, Ray Train, timm cost a worker 7-12 s before its first shard)."""
    code = ("import sys, pipeline.tasks; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
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
        "shards": [{"name": "shard-000000.tar", "bytes": 1, "sha256": "0" * 64, "samples": 1,
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
                  "first_key": "a", "last_key": "a"}]}, "shards\\[0\\].name: shard URL 'pipe:rm -rf /'"),
    ({"shards": [{"name": "x.tar"}]}, "shards\\[0\\]: 'bytes' is a required property"),
    ({"shards": [{"name": "../other/x.tar", "bytes": 1, "sha256": "0" * 64, "samples": 1, "first_key": "a",
                  "last_key": "a"}]}, "shard name '../other/x.tar' is not a relative path inside"),
    ({"shards": [{"name": "/etc/x.tar", "bytes": 1, "sha256": "0" * 64, "samples": 1, "first_key": "a",
                  "last_key": "a"}]}, "shard name '/etc/x.tar' is not a relative path inside"),
    ({"shards": [{"name": 7, "bytes": 1, "sha256": "0" * 64, "samples": 1, "first_key": "a", "last_key": "a"}]},
     "shards\\[0\\].name: 7 is not of type 'string'"),
    ({"totals": {"inputs": 1, "samples": "1", "skipped": 0, "shards": 1, "bytes": 1}},
     "totals.samples: '1' is not of type 'integer'"),
    ({"totals": {"inputs": 1, "samples": 2, "skipped": 0, "shards": 1, "bytes": 1}},
     "totals.samples is 2, but the shards' samples add up to 1"),
    ({"totals": {"inputs": 3, "samples": 1, "skipped": 0, "shards": 1, "bytes": 1}},
     "totals.inputs is 3, but samples \\+ skipped = 1 \\+ 0"),
    ({"skipped": [{"index": 0, "source_id": "x"}]}, "skipped\\[0\\]: 'reason' is a required property"),
    ({"categories": [{"id": 1}]}, "categories\\[0\\]: 'name' is a required property"),
])
def test_bad_manifests_are_refused_naming_the_file(tmp_path, changes, message):
    manifest = _minimal_manifest(**changes)
    if message is None:  # a missing required field
        del manifest["seed"]
        message = "\\(top level\\): 'seed' is a required property"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_pipe_url_refused_before_anything_is_opened(tmp_path):
    path = tmp_path / "manifest.json"
    shard = {"name": "pipe:touch " + str(tmp_path / "pwned"), "bytes": 1, "sha256": "0" * 64,
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


def _real_set(folder: Path, shards: int = 2, per_shard: int = 3) -> Path:
    """A small valid shard set written with the project's tar writer, no Ray."""
    folder.mkdir(parents=True, exist_ok=True)

    from manifests import write_manifest
    from pipeline.tarwriter import ShardTarWriter

    entries = []
    for s in range(shards):
        keys = [f"demo-{s * per_shard + i:08d}" for i in range(per_shard)]
        with open(folder / f"shard-{s:06d}.tar", "wb") as f, ShardTarWriter(f) as writer:
            for key in keys:
                writer.write({"__key__": key, "png": b"\x89PNG" + key.encode(), "cls": b"0", "json": b"{}"})
        entries.append({"name": f"shard-{s:06d}.tar", "bytes": writer.size, "sha256": writer.sha256.hexdigest(),
                        "samples": per_shard, "first_key": keys[0], "last_key": keys[-1]})
    n = shards * per_shard
    write_manifest(folder, _minimal_manifest(shards=entries, totals={"inputs": n, "samples": n, "skipped": 0,
                                                                      "shards": shards, "bytes": sum(
                                                                          e["bytes"] for e in entries)}))
    return folder


def _mutations(manifest: dict):
    """(what, mutated copy): types swapped, keys dropped, numbers and names changed."""
    import copy

    for i, shard in enumerate(manifest["shards"]):
        for field, value in shard.items():
            m = copy.deepcopy(manifest)
            del m["shards"][i][field]
            yield f"drop shards[{i}].{field}", m
            m = copy.deepcopy(manifest)
            m["shards"][i][field] = str(value) if not isinstance(value, str) else 5
            yield f"retype shards[{i}].{field}", m
            if isinstance(value, int):
                m = copy.deepcopy(manifest)
                m["shards"][i][field] = value + 1
                yield f"change shards[{i}].{field}", m
        for field, value in (("first_key", "demo-99999999"), ("last_key", "demo-99999998"),
                             ("sha256", "f" * 64), ("name", "../" + shard["name"])):
            m = copy.deepcopy(manifest)
            m["shards"][i][field] = value
            yield f"set shards[{i}].{field}", m
    for field in manifest["totals"]:
        m = copy.deepcopy(manifest)
        m["totals"][field] += 1
        yield f"change totals.{field}", m
    for field in ("shards", "totals", "skipped", "format_version", "seed"):
        m = copy.deepcopy(manifest)
        m[field] = "x"
        yield f"retype {field}", m
    m = copy.deepcopy(manifest)
    m["shards"].append(copy.deepcopy(m["shards"][0]))
    yield "shard listed twice", m


def test_verify_fuzzed_manifests_fail_with_a_message_never_a_traceback_or_ok(tmp_path, capsys):
    folder = _real_set(tmp_path)
    original = (folder / "manifest.json").read_text()
    assert manifests_cli(["verify", str(folder)]) == 0
    capsys.readouterr()
    for what, mutated in _mutations(json.loads(original)):
        (folder / "manifest.json").write_text(json.dumps(mutated))
        for command in (["verify", str(folder)], ["show", str(folder)]):
            code = manifests_cli(command)
            out = capsys.readouterr()
            if command[0] == "verify":
                assert code in (1, 2), f"{what}: verify said OK"
            assert code == 0 or "error:" in out.err or "BAD" in out.out, f"{what}: no message"
            assert "Traceback" not in out.err, what


def test_verify_refuses_shards_outside_the_folder_and_non_files(tmp_path, capsys):
    import os

    folder = _real_set(tmp_path / "set")
    outside = tmp_path / "elsewhere.tar"
    (folder / "shard-000001.tar").rename(outside)
    (folder / "shard-000001.tar").symlink_to(outside)  # a link out of the set
    assert manifests_cli(["verify", str(folder)]) == 1
    assert "outside the shard set's folder" in capsys.readouterr().out
    (folder / "shard-000001.tar").unlink()
    os.mkfifo(folder / "shard-000001.tar")  # a FIFO would block a reader forever
    assert manifests_cli(["verify", str(folder)]) == 1
    assert "not a regular file" in capsys.readouterr().out


def test_a_key_in_two_shards_is_found(tmp_path, capsys):
    from pipeline.tarwriter import ShardTarWriter

    folder = _real_set(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    with open(folder / "shard-000001.tar", "wb") as f, ShardTarWriter(f) as writer:  # its middle key repeats
        for key in ("demo-00000003", "demo-00000001", "demo-00000005"):
            writer.write({"__key__": key, "png": b"\x89PNG" + key.encode(), "cls": b"0", "json": b"{}"})
    manifest["shards"][1].update(bytes=writer.size, sha256=writer.sha256.hexdigest())
    manifest["totals"]["bytes"] = sum(s["bytes"] for s in manifest["shards"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert manifests_cli(["verify", str(folder)]) == 1
    assert "shard-000001.tar: duplicate key: expected demo-00000001 only in shard-000000.tar" in capsys.readouterr().out
