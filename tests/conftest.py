"""Test-wide settings: never touch a hub, read the references' prompt sets from ../shared, stay deterministic."""
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED_PROMPTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prompts"
if SHARED_PROMPTS.exists():
    os.environ.setdefault("FLOWRL_PROMPTS_DIR", str(SHARED_PROMPTS))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_words():
    return "a photo of an the red blue green cat dog left right above below two three".split()
