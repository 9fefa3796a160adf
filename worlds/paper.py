"""The paper-scale world: a saved pipeline (path or hub id) of any family, the references' prompt sets
(:mod:`rollout.datasets`) and the papers' rewards (:mod:`rewards`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from worlds.base import World

TASK_SETS = {"geneval": ("geneval_train", "geneval_test"), "ocr": ("ocr_train", "ocr_test"),
             "pickscore": ("pickscore_train", "pickscore_test"), "hpsv2": ("pickscore_train", "drawbench_test"),
             "multi_reward": ("pickscore_train", "drawbench_test")}
"""Task -> (training prompt set, evaluation prompt set)."""
TASK_EVAL = {"geneval": "", "ocr": "ocr", "pickscore": "pickscore", "hpsv2": "hpsv2",
             "multi_reward": "pickscore:1,hpsv2:1,clipscore:1"}
"""Task -> the reward its evaluation reports (empty: GenEval's accuracies); the task's training reward, as the
references evaluate their OCR, PickScore and HPSv2 runs (multi_reward: the mean of its three rewards)."""


def paper_world(model: str, task: str = "geneval") -> World:
    """The world of pipeline ``model`` at ``task``: 512 px, 40 evaluation steps, the family's own run options
    (SD3: 128 T5 tokens, integer timesteps at sampling like the references) with autocast on GPU in the family's
    dtype (SD3: fp16)."""
    from rollout.families import detect_family, policy_class

    if task not in TASK_SETS:
        raise ValueError(f"unknown task {task!r} for a paper-scale world; choose from {sorted(TASK_SETS)}")
    train, test = TASK_SETS[task]
    cls = policy_class(detect_family(model) or "sd3")
    opts = dataclasses.replace(cls.default_options(),
                               autocast_dtype=cls.cuda_dtype if torch.cuda.is_available() else None)
    return World(name=Path(model).name, model=model, resolution=512, eval_steps=40, policy_options=opts,
                 train_set=train, test_set=test, eval_spec=TASK_EVAL[task])
