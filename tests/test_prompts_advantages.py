"""Prompt files, the grouped sampler, advantages, the reward interface and the prompt-set fetcher."""
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from rewards import build_reward, parse_reward_spec
from rewards.base import AsyncRewards, MultiReward, RewardError
from rollout.advantages import group_advantages
from rollout.datasets import SETS, load_prompt_set
from rollout.prompts import GroupedSampler, PromptFileError, load_geneval_metadata, load_text_prompts


def test_advantages_by_hand_global_and_group_std():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0, 10.0])
    ids = ["a", "a", "b", "b", "c"]
    std_all = torch.tensor([1.0, 3.0, 2.0, 2.0, 10.0]).std(unbiased=False).item()
    expected = [-1 / (std_all + 1e-4), 1 / (std_all + 1e-4), 0.0, 0.0, 0.0]
    assert group_advantages(r, ids).tolist() == pytest.approx(expected, rel=1e-6)
    per_group = group_advantages(r, ids, global_std=False).tolist()
    assert per_group == pytest.approx([-1 / 1.0001, 1 / 1.0001, 0.0, 0.0, 0.0], rel=1e-6)  # singleton group -> 0
    with pytest.raises(ValueError):
        group_advantages(r, ids[:3])


@pytest.mark.parametrize("world,batch", [(1, 8), (2, 4), (4, 2)])
def test_sharding_covers_every_prompt_image_exactly_once(world, batch):
    k, ppe = 4, 6
    all_samples = []
    for rank in range(world):
        s = GroupedSampler(num_prompts=20, images_per_prompt=k, prompts_per_epoch=ppe, batch_size=batch,
                           world_size=world, rank=rank, seed=3)
        batches = s.batches(epoch=5)
        assert all(len(b) == batch for b in batches) and len(batches) == s.batches_per_epoch
        all_samples += [i for b in batches for i in b]
    counts = Counter(all_samples)
    assert len(counts) == ppe and set(counts.values()) == {k}
    ref = GroupedSampler(20, k, ppe, batch * world, seed=3).epoch_samples(5)
    assert Counter(ref) == counts  # same epoch content whatever the world size


def test_sampler_is_deterministic_per_seed_and_epoch():
    a = GroupedSampler(50, 4, 8, 8, seed=1)
    assert a.batches(2) == GroupedSampler(50, 4, 8, 8, seed=1).batches(2)
    assert a.batches(2) != a.batches(3)
    assert a.batches(2) != GroupedSampler(50, 4, 8, 8, seed=2).batches(2)


def test_batch_arithmetic_error_names_the_numbers():
    with pytest.raises(ValueError, match=r"6 x 4 = 24 .* 5 x 2 = 10.*change prompts_per_epoch"):
        GroupedSampler(20, 4, 6, batch_size=2, world_size=5)


def test_malformed_prompt_files_name_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"tag": "colors", "include": [], "prompt": "a red cat"}\n{not json\n')
    with pytest.raises(PromptFileError, match=r"m.jsonl:2: not valid JSON"):
        load_geneval_metadata(p)
    p.write_text('{"tag": "weird", "include": [], "prompt": "x"}\n')
    with pytest.raises(PromptFileError, match=r"m.jsonl:1: tag"):
        load_geneval_metadata(p)
    o = tmp_path / "ocr.txt"
    o.write_text('a sign saying "hello"\na sign with no quotes\n')
    with pytest.raises(PromptFileError, match=r"ocr.txt:2: .*no double-quoted"):
        load_text_prompts(o, kind="ocr")
    o.write_text('a sign saying ""\n')
    with pytest.raises(PromptFileError, match=r"ocr.txt:1: .*empty quoted"):
        load_text_prompts(o, kind="ocr")
    e = tmp_path / "empty.txt"
    e.write_text("\n\n")
    with pytest.raises(PromptFileError, match="empty.txt: the file holds no prompts"):
        load_text_prompts(e)


@pytest.mark.skipif(not os.environ.get("FLOWRL_PROMPTS_DIR"), reason="../shared/data/prompts not present")
def test_reference_prompt_sets_load_and_verify_hash():
    ge = load_prompt_set("geneval_test")
    assert len(ge) == 2212 and len(set(ge.prompts)) == 553
    assert Counter(m["tag"] for m in ge.metadata)["position"] == 400
    assert len(load_prompt_set("ocr_test")) == 1018
    assert len(load_prompt_set("drawbench_test")) == 1000


def test_missing_prompt_set_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m rollout.datasets fetch geneval_train"):
        load_prompt_set("geneval_train", root=tmp_path)
    assert SETS["ocr_test"].url.startswith("https://raw.githubusercontent.com/yifan123/flow_grpo/ac4c86e")


def test_wrong_hash_is_refused(tmp_path):
    path = tmp_path / SETS["ocr_test"].local
    path.parent.mkdir(parents=True)
    path.write_text('a "b"\n')
    with pytest.raises(ValueError, match="sha256"):
        load_prompt_set("ocr_test", root=tmp_path)


def test_multi_reward_weights_and_named_failures():
    images = torch.rand(3, 3, 8, 8)
    ok = lambda im, p, m: {"ok": torch.tensor([1.0, 2.0, 3.0])}  # noqa: E731
    two = lambda im, p, m: {"two": torch.tensor([1.0, 1.0, 1.0]), "two_extra": torch.zeros(3)}  # noqa: E731
    out = MultiReward({"ok": ok, "two": two}, {"ok": 0.5, "two": 2.0})(images, ["a"] * 3, [{}] * 3)
    assert out["avg"].tolist() == pytest.approx([2.5, 3.0, 3.5])
    assert "two_extra" in out

    def broken(im, p, m):
        raise RuntimeError("model on fire")

    with pytest.raises(RewardError, match="reward 'bad' failed: RuntimeError: model on fire"):
        MultiReward({"bad": broken}, {"bad": 1.0})(images, ["a"] * 3, [{}] * 3)
    runner = AsyncRewards(MultiReward({"bad": broken}, {"bad": 1.0}))
    with pytest.raises(RewardError, match="bad"):
        runner.result(runner.submit(images, ["a"] * 3, [{}] * 3))
    runner.close()


def test_reward_spec_parsing_and_registry():
    assert parse_reward_spec("pickscore:0.5,hpsv2") == {"pickscore": 0.5, "hpsv2": 1.0}
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        parse_reward_spec("nope")
    r = build_reward("brightness")
    out = r(torch.full((2, 3, 4, 4), 0.25), ["a", "b"], [{}, {}])
    assert out["avg"].tolist() == pytest.approx([0.25, 0.25])
