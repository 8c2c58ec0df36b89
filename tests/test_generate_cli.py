"""The entry script's answers to wrong flags and bad sources, before any Ray work starts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("generate", REPO / "pipeline" / "generate.py")
_generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generate)
main = _generate.main


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "invalid value for --workers"),
    (["--samples-per-shard", "-1"], "invalid value for --samples-per-shard"),
    (["--repaint-fraction", "0"], "invalid value for --repaint-fraction"),
    (["--repaint-size", "50"], "invalid value for --repaint-size"),
    (["--region-keep-prob", "1"], "invalid value for --region-keep-prob"),
    (["--region-keep-prob", "-0.1"], "invalid value for --region-keep-prob"),
    (["--task-warmup", "-1"], "invalid value for --task-warmup"),
    (["--source", "imagefolder:/x", "--out", "/tmp/x", "--segmenter", "demo"],
     "--segmenter demo needs the demo source"),
    (["--segmenter", "slic"], "--segmenter 'slic': expected fh[:scale=S,sigma=G,min_size=M], deeplab:WEIGHTS, coco"),
    (["--segmenter", "fh:scale=x"], "--segmenter 'fh:scale=x': scale='x' is not a number"),
    (["--segmenter", "fh:k=3"], "--segmenter 'fh:k=3': unknown fh parameter 'k'"),
    (["--segmenter", "fh:min_size=-1"], "--segmenter 'fh:min_size=-1': min_size must be positive"),
    (["--segmenter", "deeplab:/nonexistent/w.pt"], "weights file /nonexistent/w.pt not found"),
    (["--segmenter", "coco"], "--segmenter coco needs a coco: source"),
    (["--repainter", "/nonexistent/r.pt"], "--repainter /nonexistent/r.pt: file not found"),
    (["--repainter-steps", "0"], "--repainter-steps 0 needs --repainter CKPT"),
    (["--variant-latent", "uniform"],
     "invalid value for --variant-latent uniform: must be one of prior, bank, posterior"),
    (["--train-variant-latent", "posterior"],
     "invalid value for --train-variant-latent posterior: must be one of prior, bank"),
    (["--repainter-structure", "lines"],
     "invalid value for --repainter-structure lines: must be one of segments, edges"),
    (["--variant-hue", "all"], "invalid value for --variant-hue all: must be one of none, image, region"),
    (["--variant-detail", "2"], "invalid value for --variant-detail 2.0: must be in [0, 1]"),
    (["--repainter-norm", "group"], "--repainter-norm group: must be one of instance, batch, syncbatch"),
    (["--max-side", "4"], "invalid value for --max-side 4: must be >= 8"),
    (["--repainter-norm", "syncbatch"], "--repainter-norm syncbatch needs GPUs"),
    (["--task-model", "resnet_nope"], "--task-model resnet_nope: not a timm model name"),
    (["--source", "imagefolder:/x"], "--out is required for imagefolder: and coco: sources"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_wrong_flags_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_malformed_coco_stops_the_job_naming_file_and_annotation(tmp_path, capsys):
    ann = tmp_path / "instances_x.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 2]}],
        "categories": [{"id": 1, "name": "x"}]}))
    (tmp_path / "images").mkdir()
    code = main(["--source", f"coco:{ann}:{tmp_path / 'images'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"{ann}: annotation id 5: bbox has negative width or height" in err
    assert not (tmp_path / "out").exists()


def test_missing_image_folder_is_named(tmp_path, capsys):
    assert main(["--source", f"imagefolder:{tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'nope'}: not a directory" in capsys.readouterr().err


def test_post_painting_options_decide_the_shards_bytes():
    """--variant-hue and --variant-detail change the variants, so a resume with other values is refused."""
    from pipeline.job_config import GenerateConfig

    base = GenerateConfig(source="demo:8:32").output_settings()
    assert base["variant_hue"] == "none" and base["variant_detail"] == 0.0
    assert GenerateConfig(source="demo:8:32", variant_hue="region").output_settings() != base
    assert GenerateConfig(source="demo:8:32", variant_detail=0.5).output_settings() != base
