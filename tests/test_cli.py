"""User errors on the command line: one ``error:`` line naming the flag or setting and the fix, exit code 2, no
traceback, nothing loaded or created first."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import eval as bench_eval
from bench import run as bench_run

REPO = Path(__file__).resolve().parents[1]


def cli_error(main, argv: list[str], capsys) -> str:
    """The ``error:`` line that ``main(argv)`` prints before exiting with code 2 (asserting it does just that)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(("python -m bench.", "usage")) and sum("error:" in line for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("argv,expected", [
    (["--methods", "nft,ppo"], ["--methods", "unknown method 'ppo'", "flowgrpo-fast"]),
    (["--methods", "nft,nft"], ["--methods", "nft given twice"]),
    (["optim.lr"], ["'optim.lr'", "key=value"]),
    (["nft.nft_bta=0.1"], ["unknown setting 'nft.nft_bta'", "check the spelling", "nft_beta"]),
    (["nope.lr=1"], ["unknown setting 'nope.lr'", "'nope' is not a section", "optim"]),
    (["optim.lr=fast"], ["optim.lr='fast'", "expected float", "0.001"]),
    (["lora.rank=1.5"], ["lora.rank='1.5'", "expected int"]),
    (["nft.solver=heun"], ["nft.solver='heun'", "dpm2"]),
    (["--seeds", "a,b"], ["--seeds", "'a' is not a non-negative integer"]),
    (["--seeds", "-1"], ["--seeds", "'-1' is not a non-negative integer"]),
    (["--seeds", "0,1,0"], ["--seeds", "0 given twice"]),
    (["--seeds", ","], ["--seeds", "empty"]),
    (["--budget-wall-s", "-5"], ["--budget-wall-s", "-5 is below 0", "0 for no limit"]),
    (["--budget-cpu-s", "-1"], ["--budget-cpu-s", "below 0"]),
    (["--budget-gpu-hours", "-0.5"], ["--budget-gpu-hours", "below 0"]),
    (["--budget-wall-s", "soon"], ["--budget-wall-s", "invalid float value"]),
    (["budget_wall_s=-5"], ["--budget-wall-s (setting budget_wall_s)", "below 0"]),
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--epochs", "-3"], ["--epochs", "-3 is below 1"]),
    (["--eval-every", "-1"], ["--eval-every", "0 to disable them"]),
    (["--eval-every-s", "-10"], ["--eval-every-s", "below 0"]),
    (["prompts_per_epoch=0"], ["setting prompts_per_epoch", "at least 1"]),
    (["--run-id", "mine", "--methods", "nft,flowgrpo"], ["--run-id names one run", "single method"]),
    (["--run-id", "../escape", "--methods", "nft"], ["--run-id", "letters, digits"]),
    (["--world", "/no/such/sd3.5-medium"], ["--world", "/no/such/sd3.5-medium", "existing folder", "hub id"]),
    (["--reward", "pickscor"], ["--reward", "unknown reward 'pickscor'", "pickscore"]),
    (["train_prompts=/no/such/mine.jsonl"], ["setting train_prompts", "no file /no/such/mine.jsonl"]),
    (["reward_schedule=/no/such/stages.json"], ["setting reward_schedule", "no file"]),
    (["--config", "/no/such/run.json"], ["--config", "no file /no/such/run.json"]),
])
def test_run_rejects_bad_input_in_one_line(argv, expected, tmp_path, capsys):
    out = tmp_path / "results"
    line = cli_error(bench_run.main, [*argv, "--out", str(out), "--no-report"], capsys)
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert not out.exists()  # refused before any run folder was made


@pytest.mark.parametrize("name,text,expected", [
    ("broken.json", '{"optim": {"lr": 1e-3,}}', ["broken.json", "not valid JSON", "line 1"]),
    ("broken.yaml", "optim: [lr: 1\n", ["broken.yaml", "not valid YAML"]),
    ("list.json", "[1, 2]", ["list.json", "mapping of settings"]),
    ("typo.json", '{"optim": {"learning_rate": 1e-3}}', ["typo.json", "unknown setting 'optim.learning_rate'"]),
    ("wrong.yaml", "epochs: many\n", ["wrong.yaml", "epochs='many'", "expected int"]),
    ("negative.json", '{"budget_wall_s": -1}', ["--budget-wall-s", "below 0"]),
])
def test_run_names_the_config_file_at_fault(name, text, expected, tmp_path, capsys):
    config = tmp_path / name
    config.write_text(text)
    line = cli_error(bench_run.main, ["--config", str(config), "--print-config"], capsys)
    for fragment in expected:
        assert fragment in line, (fragment, line)


def test_good_input_still_resolves(capsys):
    assert bench_run.main(["--methods", "nft", "--seeds", "0,3", "--budget-cpu-s", "60", "--print-config"]) == []
    assert capsys.readouterr().out.count('"budget_cpu_s": 60.0') == 2


@pytest.mark.parametrize("argv,expected", [
    (["--num-steps", "0"], ["--num-steps", "0 is below 1"]),
    (["--images-per-prompt", "-2"], ["--images-per-prompt", "below 1"]),
    (["--max-prompts", "many"], ["--max-prompts", "'many' is not an integer"]),
    (["--seed", "-1"], ["--seed", "non-negative"]),
    (["--json", "/no/such/folder/report.json"], ["--json", "no folder /no/such/folder"]),
    (["--model", "/no/such/model"], ["--model", "existing folder"]),
])
def test_eval_rejects_bad_input_in_one_line(argv, expected, capsys):
    line = cli_error(bench_eval.main, argv, capsys)
    for fragment in expected:
        assert fragment in line, (fragment, line)


def test_the_real_entry_point_prints_one_line_and_no_library_notices():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.run", "--seeds", "a", "--print-config"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and "torchvision" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("python -m bench.run: error: argument --seeds: 'a' is not a "
                                                   "non-negative integer; give seeds such as 0,1,2")


def test_a_paper_world_without_its_prompt_sets_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLOWRL_PROMPTS_DIR", str(tmp_path / "no_prompts"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    line = cli_error(bench_run.main, ["--world", str(tmp_path / "model"), "--out", str(tmp_path / "r"),
                                      "--no-report"], capsys)
    assert "train_prompts" in line and "geneval_train" in line and "rollout.datasets fetch geneval_train" in line
    assert not (tmp_path / "r").exists()


def test_only_the_named_third_party_notices_are_dropped():
    """bench.quiet drops exactly its notices: a notice of another text from the same logger still shows."""
    import logging

    import bench.quiet  # noqa: F401  (installs the filters)

    dropped = {"transformers.utils.import_utils": "`CLIPImageProcessor` requires torchvision (not installed); "
                                                  "falling back to `CLIPImageProcessorPil`",
               "diffusers.models.modeling_utils": "There are modules in AutoencoderKL that should be kept in float32: "
                                                  "[]. Casting directly with `to()` can lead to inconsistent results",
               "DeepSpeed": "Setting accelerator to CPU. If you have GPU or other accelerator, "
                            "we were unable to detect"}
    kept = {"diffusers.models.modeling_utils": "There are modules in AutoencoderKL that should be kept in float32: "
                                               "['quant_conv']. Casting directly with `to()`",
            "DeepSpeed": "Setting accelerator to CUDA"}
    seen: list[str] = []

    class Collect(logging.Handler):  # on each logger itself: DeepSpeed's logger does not propagate to the root
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(logging.WARNING)
    names = set(dropped) | set(kept)
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        for name, text in [*dropped.items(), *kept.items()]:
            logging.getLogger(name).warning(text)
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
    assert seen == list(kept.values())
