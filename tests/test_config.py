"""Run configuration: resolution order, method variants, clear errors, prompt files of one's own."""
import json

import pytest

from bench.config import SHAPES_PRESET, RunConfig, resolve
from bench.run import main as run_main
from worlds import load_world
from rollout.prompts import PromptFileError


def test_resolution_order_defaults_preset_file_overrides(tmp_path):
    assert RunConfig().optim.lr == 3e-4  # the references' default
    cfg = resolve({"method": "nft"}, None, [])
    assert cfg.optim.lr == SHAPES_PRESET["optim.lr"] and cfg.lora.rank == SHAPES_PRESET["lora.rank"]
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"optim": {"lr": 5e-4}, "nft.nft_beta": 0.5}))
    cfg = resolve({"method": "nft"}, str(config_file), [])
    assert (cfg.optim.lr, cfg.nft.nft_beta) == (5e-4, 0.5)
    cfg = resolve({"method": "nft"}, str(config_file), ["optim.lr=2e-4", "nft.decay_type=linear:0.01:0.5"])
    assert (cfg.optim.lr, cfg.nft.nft_beta, cfg.nft.decay_type) == (2e-4, 0.5, "linear:0.01:0.5")
    assert resolve({"method": "nft", "epochs": 3}, None, []).epochs == 3  # flags beat the preset


def test_method_variant_is_in_the_config_and_overrides_win():
    fast = resolve({"method": "flowgrpo-fast"}, None, [])
    assert (fast.flowgrpo.solver, fast.flowgrpo.sde_window, fast.flowgrpo.guidance) == ("cps", 3, 1.0)
    tuned = resolve({"method": "flowgrpo-fast"}, None, ["flowgrpo.guidance=4.5", "flowgrpo.sde_window=2"])
    assert (tuned.flowgrpo.solver, tuned.flowgrpo.sde_window, tuned.flowgrpo.guidance) == ("cps", 2, 4.5)
    assert resolve({"method": "flowgrpo"}, None, []).flowgrpo.solver == "sde"  # the plain method is untouched


def test_bad_settings_name_the_key_and_the_choices(tmp_path):
    with pytest.raises(KeyError, match="nft_bta"):
        resolve({"method": "nft"}, None, ["nft.nft_bta=0.1"])
    with pytest.raises(ValueError, match="optim.lr='fast'"):
        resolve({"method": "nft"}, None, ["optim.lr=fast"])
    with pytest.raises(ValueError, match="key=value"):
        resolve({"method": "nft"}, None, ["optim.lr"])
    with pytest.raises(ValueError, match="dpm2"):
        resolve({"method": "nft"}, None, ["nft.solver=heun"])
    with pytest.raises(ValueError, match="unknown method"):
        resolve({"method": "ppo"}, None, [])
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json"):
        resolve({"method": "nft"}, str(bad), [])


def test_print_config_shows_every_method_resolved(capsys):
    assert run_main(["--methods", "nft,flowgrpo-fast", "--print-config", "optim.lr=7e-4"]) == []
    text = capsys.readouterr().out
    configs = [json.loads(chunk) for chunk in ("{" + c for c in text.strip().lstrip("{").split("\n{"))]
    assert [c["method"] for c in configs] == ["nft", "flowgrpo-fast"]
    assert all(c["optim"]["lr"] == 7e-4 for c in configs) and configs[1]["flowgrpo"]["solver"] == "cps"


def test_prompt_files_of_ones_own(tmp_path):
    world = load_world("shapes")
    lines = [{"tag": "counting", "include": [{"class": "circle", "count": 2}], "prompt": "a photo of two circles"}]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert world.prompts(str(jsonl)).prompts == ["a photo of two circles"]
    txt = tmp_path / "mine.txt"
    txt.write_text("a red circle\n\na blue square\n")
    assert world.prompts(str(txt)).prompts == ["a red circle", "a blue square"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(PromptFileError, match="broken.jsonl:2"):
        world.prompts(str(broken))
    assert len(world.prompts("test")) == 553


def test_worlds_load_without_bench_worlds():
    """The World lives with the worlds (worlds/base.py, worlds/paper.py): the shapes world and a paper-scale world
    load without importing bench.worlds, so the old bench.worlds <-> worlds.shapes.world import cycle is gone."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, worlds; from worlds.shapes.world import SHAPES; assert worlds.load_world('shapes') is SHAPES; "
            "w = worlds.load_world('/no/such/model', 'ocr'); assert (w.train_set, w.test_set) == ('ocr_train', "
            "'ocr_test'); assert 'bench.worlds' not in sys.modules, sorted(m for m in sys.modules if 'bench' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)


def test_paper_tasks_evaluate_their_own_reward(tmp_path):
    """GenEval runs report GenEval's accuracies; OCR, PickScore, HPSv2 and multi-reward runs are evaluated with the
    reward their task preset trains on (as the references evaluate them), not with GenEval."""
    from bench.config import PAPER_PRESETS
    from worlds.paper import paper_world

    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    assert paper_world(str(tmp_path), "geneval").eval_spec == ""
    for task in ("ocr", "pickscore", "hpsv2", "multi_reward"):
        assert paper_world(str(tmp_path), task).eval_spec == PAPER_PRESETS[task]["reward"]
    world = paper_world(str(tmp_path), "ocr")
    world.eval_spec = "brightness"  # a reward that needs no weights: the spec is what evaluation builds
    reward = world.eval_reward()
    import torch

    white = torch.ones(1, 3, 8, 8)
    assert float(reward(white, ["a prompt"], [{}])["avg"][0]) == pytest.approx(1.0)
