"""Typed run configuration: one dataclass tree, presets per task, a config file and ``key=value`` overrides.

Resolution order: dataclass defaults -> world/task preset, method variant, method preset -> ``--config`` file
(JSON or YAML) -> ``key=value`` overrides (dotted paths, e.g. ``nft.nft_beta=0.1 optim.lr=1e-3 lora.rank=16``). The
resolved config is stored with every run (``results/<run_id>/meta.json``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from methods.awm import AWMConfig
from methods.base import OptimConfig
from methods.cfg import CFGConfig
from methods.dgpo import DGPOConfig
from methods.flowgrpo import FlowGRPOConfig
from methods.nft import NFTConfig
from rollout.lora import LoraOptions

Task = Literal["geneval", "ocr", "pickscore", "hpsv2", "multi_reward"]


@dataclass
class RunConfig:
    """Everything a run needs; every field is a flag or a ``key=value`` override."""

    method: str = "nft"
    """Method name (see methods.registry): nft, flowgrpo, flowgrpo-fast, grpo-guard, tempflow-grpo, awm, dgpo,
    dgpo-wocfg, dgpo-wocfg-emaref, cfg."""
    world: str = "shapes"
    """"shapes" (built-in CPU world) or a path / hub id of a saved pipeline of any family (paper scale: SD3 / SD3.5,
    FLUX.1, FLUX.2 klein, Qwen-Image, Z-Image; see rollout.families)."""
    task: Task = "geneval"
    """Paper preset (prompt sets and hyperparameters) used at paper scale."""
    reward: str = "geneval"
    """Reward spec: a name or "name:weight,name:weight" (paper names; the world maps them)."""
    train_prompts: str = ""
    """Training prompts: a set name of the world ("train", "test"; paper scale: e.g. "geneval_train") or a file
    (``*.jsonl`` GenEval metadata, ``*.txt`` one prompt per line); empty = the world's training set."""
    test_prompts: str = ""
    """Evaluation prompts, same forms as ``train_prompts``; empty = the world's test set."""
    eval_reward: str = ""
    """Reward spec that scores the evaluation images (e.g. "brightness" for a tiny model); empty = the world's
    evaluation reward (GenEval: the shapes world's detector, or Mask2Former + CLIP at paper scale; at paper scale the
    ocr, pickscore, hpsv2 and multi_reward tasks evaluate their own training reward)."""
    seed: int = 0
    epochs: int = 60
    """Maximum epochs; the run also stops at a wall-clock or device-hour budget."""
    budget_wall_s: float = 0.0
    """Stop once rollout + reward + train wall-clock exceeds this (0 = no limit; evaluation time excluded)."""
    budget_gpu_hours: float = 0.0
    """Stop once device-hours (wall x devices, evaluation excluded) exceed this (0 = no limit)."""
    budget_cpu_s: float = 0.0
    """Stop once the process's CPU time in rollout + reward + train exceeds this (0 = no limit; evaluation
    excluded). The contention-proof clock for CPU runs: two one-thread runs side by side, or a run sharing the
    machine with other work, are slowed in wall-clock but not in CPU seconds."""
    prompts_per_epoch: int = 8
    """Distinct prompts per epoch (paper: 48)."""
    images_per_prompt: int = 8
    """Group size K (paper: 24)."""
    rollout_batch_size: int = 32
    """Images per sampling batch per rank."""
    resolution: int = 0
    """Image side in pixels (0 = the world's)."""
    eval_every: int = 10
    """Evaluate every N epochs (and at epoch 0 and at the end); 0 disables in-run evaluation."""
    eval_every_s: float = 0.0
    """> 0: evaluate instead each time the training clock (CPU seconds when ``budget_cpu_s`` is set, else
    wall-clock seconds) passes a multiple of this, so methods of different epoch lengths share one cadence."""
    eval_prompts: int = 256
    """Test prompts per evaluation (0 = all); x eval_images_per_prompt images."""
    eval_images_per_prompt: int = 4
    eval_steps: int = 0
    """Euler steps of the evaluation (0 = the world's: 10 for shapes, 40 at paper scale)."""
    checkpoint_every: int = 1
    """Write the resume checkpoint every N epochs (atomic; LoRA-sized)."""
    out: str = "results"
    """Results root; a run writes results/<run_id>/."""
    run_id: str = ""
    """Fixed run id (resume it); empty = a new id from method, reward, seed and time."""
    ablation: str = ""
    """Label that files this run under the report's ablations instead of the main curves."""
    device: str = ""
    """Torch device (empty = cuda when available, else cpu)."""
    reward_workers: int = 2
    """Threads scoring rewards while sampling continues."""
    tensorboard: bool = True
    """Write TensorBoard curves and sample grids under the run folder."""
    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works)."""
    reward_schedule: str = ""
    """JSON file with a staged schedule: a list of {"epochs", "prompt_set", "weights"} (rewards.schedule); it
    overrides `reward` and the training prompt set stage by stage (DiffusionNFT's multi-reward model)."""
    backend: Literal["ddp", "deepspeed"] = "ddp"
    """Multi-rank training: "ddp" (all-reduce LoRA gradients, AdamW on every rank) or "deepspeed" (ZeRO over the
    LoRA optimizer; needs `pip install 'flowrl-bench[deepspeed]'`)."""
    zero_stage: int = 2
    """ZeRO stage with backend=deepspeed: 0, 1 (partitioned optimizer state) or 2 (+ gradients); 3 is refused."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    nft: NFTConfig = field(default_factory=NFTConfig)
    flowgrpo: FlowGRPOConfig = field(default_factory=FlowGRPOConfig)
    awm: AWMConfig = field(default_factory=AWMConfig)
    dgpo: DGPOConfig = field(default_factory=DGPOConfig)
    cfg: CFGConfig = field(default_factory=CFGConfig)


# ------------------------------------------------------------------------------------------------- presets
SHAPES_PRESET = {
    # Tuned on the shapes world with the same effort for both methods: docs/tuning.md.
    "lora.rank": 16, "lora.alpha": 32, "optim.lr": 1e-3,
    "prompts_per_epoch": 8, "images_per_prompt": 8, "rollout_batch_size": 32,
    "nft.train_batch_size": 16, "nft.num_steps": 10,
    # NFT on a 3.5 M-parameter model at lr 1e-3: half the sampler timesteps per image (twice the optimizer steps per
    # CPU-minute) and an old policy that lags sooner (d reaches 0.5 after 50 steps instead of 500); with the
    # reference's d = min(0.001 s, 0.5) it drifts off after ~60 steps (docs/tuning.md)
    "nft.timestep_fraction": 0.5, "nft.decay_type": "linear:0.01:0.5",
    "flowgrpo.train_batch_size": 16, "flowgrpo.num_steps": 10,
    "cfg.num_steps": 10,
    # the default comparison: equal 240 s of training wall-clock per method, eval on 128 prompts x 4 images
    "epochs": 1000, "budget_wall_s": 240.0, "eval_every": 5, "eval_prompts": 128,
}
PAPER_PRESETS: dict[str, dict] = {
    "geneval": {"reward": "geneval", "nft.nft_beta": 1.0, "nft.decay_type": "1", "nft.steps_per_epoch": 1,
                "flowgrpo.kl_beta": 0.04},
    "ocr": {"reward": "ocr", "nft.nft_beta": 0.1, "nft.decay_type": "2", "nft.steps_per_epoch": 2,
            "flowgrpo.kl_beta": 0.04},
    "pickscore": {"reward": "pickscore", "nft.nft_beta": 1.0, "nft.decay_type": "1", "nft.steps_per_epoch": 1,
                  "flowgrpo.kl_beta": 0.01},
    "hpsv2": {"reward": "hpsv2", "nft.nft_beta": 1.0, "nft.decay_type": "1", "nft.steps_per_epoch": 1,
              "flowgrpo.kl_beta": 0.01},
    "multi_reward": {"reward": "pickscore:1,hpsv2:1,clipscore:1", "nft.nft_beta": 0.1, "nft.decay_type": "1",
                     "nft.steps_per_epoch": 1, "nft.num_steps": 25},
}
PAPER_COMMON = {"prompts_per_epoch": 48, "images_per_prompt": 24, "rollout_batch_size": 9, "lora.rank": 32,
                "lora.alpha": 64, "optim.lr": 3e-4, "nft.train_batch_size": 9, "flowgrpo.train_batch_size": 9,
                "eval_every": 10, "checkpoint_every": 1, "cfg.num_steps": 40}


# Model-family settings on top of the paper preset ("paper": every task, then the task itself), for the families the
# FlowGRPO reference has configs for (yifan123/flow_grpo config/grpo.py, commit 31c71b9; line numbers are not given
# because the stored copy we read is not numbered: the functions are named instead). Every family other than SD3 also
# gets its own LoRA targets (rollout.families: the FlowPolicy subclass's ``lora_targets``).
FAMILY_PRESETS: dict[str, dict[str, dict]] = {
    # pickscore_flux and geneval_flux_fast: FLUX.1-dev, 6 sampler steps, 28 evaluation steps, guidance 3.5 through the
    # guidance embedding (PolicyOptions.guidance_embed; no true CFG at rollout, training or evaluation), sampling
    # batches and micro-batches of 3 (24 images x 48 prompts per epoch as PAPER_COMMON), no KL (beta 0); LoRA r 64,
    # alpha 128 (scripts/train_flux.py, main(), commit 74db691). pickscore_flux: SDE noise level 0.9
    # (geneval_flux_fast is flowgrpo-fast's variant as registered: CPS at 0.8 on a window of 3, clip 1e-5)
    "flux": {
        "paper": {"flowgrpo.num_steps": 6, "eval_steps": 28, "flowgrpo.guidance": 1.0, "flowgrpo.eval_guidance": 1.0,
                  "rollout_batch_size": 3, "flowgrpo.train_batch_size": 3, "nft.train_batch_size": 3,
                  "lora.rank": 64, "lora.alpha": 128, "flowgrpo.kl_beta": 0.0},
        "pickscore": {"flowgrpo.noise_level": 0.9},
    },
    # pickscore_qwenimage: Qwen-Image, 10 sampler steps, 50 evaluation steps, true CFG 4 (evaluation: base.py's
    # eval_guidance_scale 4.5, FlowGRPO's default here too), batches of 4, 16 images x 32 prompts per epoch, no KL,
    # SDE at noise level 1.2 on a window of 2 steps drawn in the first half (sde_window_size 2, range (0, 5)). Its LoRA
    # rank lives in a Qwen-Image training script we could not read: the paper default (r 32, alpha 64) stays.
    "qwen-image": {
        "pickscore": {"prompts_per_epoch": 32, "images_per_prompt": 16, "rollout_batch_size": 4,
                      "flowgrpo.train_batch_size": 4, "nft.train_batch_size": 4, "flowgrpo.num_steps": 10,
                      "eval_steps": 50, "flowgrpo.guidance": 4.0, "flowgrpo.kl_beta": 0.0, "flowgrpo.noise_level": 1.2,
                      "flowgrpo.sde_window": 2},
    },
}


def family_preset(world: str, task: str) -> dict:
    """The model family's own settings for paper-scale ``world`` at ``task`` (:data:`FAMILY_PRESETS`, its LoRA
    targets; a step-distilled FLUX.2 klein runs without CFG, as its pipeline does). SD3 and an undetectable world
    (a hub id not in ``rollout.families.HUB_IDS``): none."""
    from rollout.families import ModelLoadError, detect_family, is_distilled, policy_class

    try:
        family = detect_family(world)
    except ModelLoadError as err:
        raise ValueError(f"world {world!r}: {err}") from None
    if family in (None, "sd3"):
        return {}
    own = FAMILY_PRESETS.get(family, {})
    out = {"lora.target_modules": list(policy_class(family).lora_targets), **own.get("paper", {}), **own.get(task, {})}
    if is_distilled(world):
        out.update({"flowgrpo.guidance": 1.0, "flowgrpo.eval_guidance": 1.0})
    return out


# Settings of one method on top of the world/task preset and its registry variant, where its reference's config
# differs from FlowGRPO's in more than the method's own section: "shapes" (the shapes world), "paper" (every paper
# task), then the paper task itself.
METHOD_PRESETS: dict[str, dict[str, dict]] = {
    # config/grpo_guard.py: lr 1e-4 at every task; PickScore clips at 4e-6 (the variant's 2e-6 is GenEval's and OCR's)
    "grpo-guard": {"paper": {"optim.lr": 1e-4}, "pickscore": {"flowgrpo.clip_range": 4e-6}},
    # geneval_sd3_pr / pickscore_sd3_pr: 48 prompts x 4 initial noises x 6 branches, one noise per sampling batch,
    # micro-batches of 6 branch rows; PickScore's beta 0.001 (older KL form). Shapes: 8 prompts x 2 noises (16 trunks,
    # 96 branch rows, 9 x 6 = 54 images per trunk) in one sampling batch, no KL (kl_beta 0: the one change of its
    # 8-trial search that beat the reference's 0.004, docs/tuning.md)
    "tempflow-grpo": {
        "paper": {"images_per_prompt": 4, "rollout_batch_size": 1, "flowgrpo.train_batch_size": 6},
        "pickscore": {"flowgrpo.kl_beta": 0.001},
        "shapes": {"images_per_prompt": 2, "rollout_batch_size": 16, "flowgrpo.kl_beta": 0.0},
    },
    # AWM, reference config/dgx_awm.py (SD3.5-M, 8 GPUs): 72 prompts x 24 images, sampling batches of 6, micro-batches
    # of 3 (its eval every 50 epochs, OCR 20, is not taken: every method is evaluated on one cadence); PickScore 24
    # prompts, tau 0 (ODE rollout), discrete times with index 0, micro-batches of 2. Shapes (untuned): the reference's
    # settings on the shapes world's 10 sampler steps, with micro-batches of 8 (8 per epoch) for CPU throughput
    "awm": {
        "paper": {"prompts_per_epoch": 72, "images_per_prompt": 24, "rollout_batch_size": 6,
                  "awm.train_batch_size": 3},
        "geneval": {"awm.beta": 0.001},
        "ocr": {"awm.beta": 0.003},
        "pickscore": {"prompts_per_epoch": 24, "awm.beta": 1e-4, "awm.noise_level": 0.0, "awm.time_type": "discrete",
                      "awm.train_batch_size": 2},
        "shapes": {"awm.num_steps": 10, "awm.train_batch_size": 8},
    },
    # DGPO, reference config/dgpo.py (SD3.5-M, 4 GPUs): 8 groups of 16 per epoch, sampling batch = micro-batch = one
    # group of 16 per GPU, LoRA r 64 / alpha 128; OCR and PickScore truncate at step 6 and switch sampling to ema_ref
    # after 200 steps; PickScore 8 groups of 24, batches of 12 (each group split over 2 GPUs: world_size x 12 must be
    # a multiple of 24). Shapes: the GenEval settings, micro-batch = sampling batch, and ema_ref 10x faster (switch
    # after 50 steps, decay min(0.01 s, 0.3)) as the NFT shapes preset does for its old policy; beta_dpo 10 (the
    # PickScore preset's), the one change of its 8-trial search that beat the untuned 100 (docs/tuning.md)
    "dgpo": {
        "paper": {"prompts_per_epoch": 8, "images_per_prompt": 16, "rollout_batch_size": 16,
                  "dgpo.train_batch_size": 16, "lora.rank": 64, "lora.alpha": 128},
        "ocr": {"dgpo.trunc_steps": 6, "dgpo.switch_ema_ref": 200, "dgpo.global_std": True},
        "pickscore": {"images_per_prompt": 24, "rollout_batch_size": 12, "dgpo.train_batch_size": 12,
                      "dgpo.beta_dpo": 10.0, "dgpo.kl_beta": 0.001, "dgpo.clip_range": 5e-2, "dgpo.trunc_steps": 6,
                      "dgpo.switch_ema_ref": 200, "dgpo.global_std": True},
        "shapes": {"dgpo.train_batch_size": 32, "dgpo.switch_ema_ref": 50, "dgpo.ema_ref_rate": 0.01,
                   "dgpo.beta_dpo": 10.0},
    },
}
# the CFG-free DGPO configs are GenEval's: the batch layout and LoRA, not the other tasks' settings (nor the shapes
# search's beta_dpo, which was tuned with CFG: they keep their variants' 100 and 2000)
for _name in ("dgpo-wocfg", "dgpo-wocfg-emaref"):
    _shapes = {k: v for k, v in METHOD_PRESETS["dgpo"]["shapes"].items() if k != "dgpo.beta_dpo"}
    METHOD_PRESETS[_name] = {"paper": METHOD_PRESETS["dgpo"]["paper"], "shapes": _shapes}


def preset(world: str, task: str) -> dict:
    if world == "shapes":
        return dict(SHAPES_PRESET)
    if task not in PAPER_PRESETS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(PAPER_PRESETS)}")
    return {**PAPER_COMMON, **PAPER_PRESETS[task], **family_preset(world, task)}


def method_preset(world: str, task: str, method: str) -> dict:
    """``method``'s own settings in ``world`` (paper scale: at ``task``), from :data:`METHOD_PRESETS`."""
    own = METHOD_PRESETS.get(method, {})
    return dict(own.get("shapes", {})) if world == "shapes" else {**own.get("paper", {}), **own.get(task, {})}


# ------------------------------------------------------------------------------------------------- overrides
def _coerce(value, typ, key: str):
    origin = typing.get_origin(typ)
    if origin is Literal:
        if value not in typing.get_args(typ):
            raise ValueError(f"setting {key}={value!r}: choose one of {typing.get_args(typ)}")
        return value
    if typ is bool or typ == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"setting {key}={value!r}: expected true or false")
    if origin is list:
        return value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
    examples = {int: "a whole number such as 16", float: "a number such as 0.001", str: "text"}
    for t in (int, float, str):
        if typ is t or typ == t.__name__:
            try:
                return t(value)
            except (TypeError, ValueError):
                raise ValueError(f"setting {key}={value!r}: expected {t.__name__}; give {examples[t]}") from None
    return value


def set_path(cfg, key: str, value) -> None:
    """Set a dotted field (``nft.nft_beta``) with type checking; unknown keys name the valid ones."""
    obj, parts = cfg, key.split(".")
    for p in parts[:-1]:
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
            raise KeyError(f"unknown setting '{key}': '{p}' is not a section; sections: {', '.join(sections)}")
        obj = getattr(obj, p)
    hints = typing.get_type_hints(type(obj))
    if parts[-1] not in hints:
        where = f"in section {'.'.join(parts[:-1])}" if parts[:-1] else "at the top level"
        raise KeyError(f"unknown setting '{key}': check the spelling; settings {where}: "
                       f"{', '.join(sorted(f.name for f in dataclasses.fields(obj)))}")
    setattr(obj, parts[-1], _coerce(value, hints[parts[-1]], key))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_file(path: str | Path) -> dict:
    """The settings of a JSON or YAML config file as dotted keys; ``ValueError`` naming the file when it cannot."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"config file {path} cannot be read ({err.strerror}): give the path of a JSON or YAML "
                         "file of settings") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)  # YAML's own message spans several lines
            where = (f"line {mark.line + 1} column {mark.column + 1}: {err.problem}" if mark
                     else " ".join(str(err).split()))
            raise ValueError(f"config file {path} is not valid YAML ({where}): fix the file") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON ({err}): fix the file (it is read as JSON "
                             "unless its name ends in .yaml or .yml)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of settings")
    return flatten(data)


@contextlib.contextmanager
def _from_file(path: str | Path | None):
    """Errors of the settings read from config file ``path`` name the file too."""
    try:
        yield
    except KeyError as err:
        raise KeyError(f"config file {path}: {err.args[0]}") from None
    except ValueError as err:
        raise ValueError(f"config file {path}: {err}") from None


def variant_settings(method: str) -> dict:
    """A method variant's defining settings as dotted keys (``flowgrpo-fast``: ``flowgrpo.solver=cps``, ...).

    Applied like a preset, so the stored config says what ran and a ``--config`` file or ``key=value`` override
    still wins over them."""
    from methods.registry import get

    entry = get(method)
    return {f"{entry.config_field}.{k}": v for k, v in entry.variant.items()}


def resolve(base: dict, config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- preset(world, task), then the method's variant and :func:`method_preset` <- config file <-
    overrides; ``base`` holds flag values (method, world...)."""
    cfg = RunConfig()
    for k, v in base.items():
        set_path(cfg, k, v)
    file_values = load_file(config_file) if config_file else {}
    for src in ("world", "task"):  # the file and overrides may change the preset's own keys
        if src in file_values:
            with _from_file(config_file):
                set_path(cfg, src, file_values[src])
    override_pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. nft.nft_beta=0.1)")
        k, v = item.split("=", 1)
        override_pairs.append((k.strip(), v.strip()))
    for k, v in override_pairs:
        if k in ("world", "task"):
            set_path(cfg, k, v)
    for k, v in {**preset(cfg.world, cfg.task), **variant_settings(cfg.method),
                 **method_preset(cfg.world, cfg.task, cfg.method)}.items():
        if k not in base:
            set_path(cfg, k, v)
    with _from_file(config_file):
        for k, v in file_values.items():
            set_path(cfg, k, v)
    for k, v in override_pairs:
        set_path(cfg, k, v)
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    return asdict(cfg)


def with_defaults(config: dict) -> dict:
    """A stored config (``meta.json``) completed with today's defaults for settings added since it was written.

    An option is added with the old behaviour as its default, so a run made before the option existed ran exactly
    that default: completing its config lets it pool with today's runs of the same setting (the reports compare
    config fingerprints of completed configs)."""

    def merge(default, stored):
        if isinstance(default, dict) and isinstance(stored, dict):
            return {**default, **{k: merge(default.get(k), v) for k, v in stored.items()}}
        return stored

    return merge(to_dict(RunConfig()), config)
