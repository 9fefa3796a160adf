"""The shapes world: renderer, prompt files, scenes satisfying prompts, detector exactness and the reward."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from rewards.geneval import TAGS, score_detections
from worlds.shapes import prompts
from worlds.shapes.detector import detect
from worlds.shapes.prompts import (
    TEST_FILE, TRAIN_FILE, VOCAB, build_files, generate_metadata, load_metadata, random_caption_scene, scene_for,
    split_pools, to_jsonl, tokenize_words,
)
from worlds.shapes.reward import ShapesGenEvalReward
from worlds.shapes.scene import (
    BACKGROUND, IMAGE_SIZE, MIN_GAP, PALETTE, Scene, SceneObject, boxes_apart, object_mask, render, size_range,
)

TEST = load_metadata(TEST_FILE)
TRAIN = load_metadata(TRAIN_FILE)


def test_shipped_files_equal_regenerated():
    train, test = build_files()
    assert TRAIN_FILE.read_text() == to_jsonl(train)
    assert TEST_FILE.read_text() == to_jsonl(test)
    assert prompts.main([]) == 0  # the --check mode agrees


def test_generation_is_deterministic():
    assert build_files() == build_files()
    assert (generate_metadata({"color_attr": 5, "colors": 3}, seed=7)
            == generate_metadata({"color_attr": 5, "colors": 3}, 7))
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [scene_for(m, a) for m in TEST[::50]] == [scene_for(m, b) for m in TEST[::50]]
    assert [random_caption_scene(a) for _ in range(20)] == [random_caption_scene(b) for _ in range(20)]


def test_tag_proportions():
    assert Counter(m["tag"] for m in TEST) == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100,
    }
    assert len(TEST) == 553
    assert Counter(m["tag"] for m in TRAIN) == {t: 5 * n for t, n in Counter(m["tag"] for m in TEST).items()}
    # repeats are balanced: within a tag, prompts appear equally often, give or take one
    for data in (TRAIN, TEST):
        for tag in TAGS:
            counts = Counter(m["prompt"] for m in data if m["tag"] == tag).values()
            assert max(counts) - min(counts) <= 1


def test_train_test_split():
    train_pool, test_pool = split_pools()
    assert {t: len(p) for t, p in test_pool.items()} == {
        "single_object": 3, "two_object": 6, "counting": 9, "colors": 6, "position": 8, "color_attr": 60,
    }
    for tag in ("colors", "position", "color_attr"):
        train = {m["prompt"] for m in TRAIN if m["tag"] == tag}
        test = {m["prompt"] for m in TEST if m["tag"] == tag}
        assert train and test and not train & test, tag
        assert train | test == {m["prompt"] for m in prompts.prompt_pool(tag)}
    # tags too small to split are shared whole
    for tag in ("single_object", "two_object", "counting"):
        assert {m["prompt"] for m in TRAIN if m["tag"] == tag} == {m["prompt"] for m in TEST if m["tag"] == tag}
    # one metadata per prompt text
    everything = {m["prompt"]: m for m in TRAIN + TEST}
    assert all(everything[m["prompt"]] == m for m in TRAIN + TEST)


def test_generate_metadata_distinct_and_bounded():
    metas = generate_metadata({"color_attr": 100, "position": 24, "single_object": 3}, seed=1)
    assert len({m["prompt"] for m in metas}) == len(metas) == 127
    held = {m["prompt"] for m in metas}
    more = generate_metadata({"position": 0, "color_attr": 80}, seed=2, exclude_prompts=held)
    assert not held & {m["prompt"] for m in more}
    with pytest.raises(ValueError, match="only 3 distinct"):
        generate_metadata({"single_object": 4}, seed=0)


def test_metadata_format_matches_geneval():
    examples = {m["tag"]: m for m in TEST}
    assert examples["counting"]["exclude"] == [{"class": examples["counting"]["include"][0]["class"],
                                                "count": examples["counting"]["include"][0]["count"] + 1}]
    assert list(examples["position"]) == ["tag", "include", "prompt"]
    assert "color" not in examples["single_object"]["include"][0]
    meta = next(m for m in TEST if m["prompt"] == "a photo of a triangle above a square")
    assert meta["include"] == [{"class": "square", "count": 1},
                               {"class": "triangle", "count": 1, "position": ["above", 0]}]
    assert any(m["prompt"].startswith("a photo of an orange") for m in TRAIN + TEST)


def test_prompts_and_captions_use_vocab_words():
    rng = np.random.default_rng(0)
    captions = [random_caption_scene(rng)[1] for _ in range(300)]
    for text in [m["prompt"] for m in TRAIN + TEST] + captions:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", text), text
        assert set(tokenize_words(text)) <= set(VOCAB), text
    assert len(VOCAB) == len(set(VOCAB))


def test_rendered_objects():
    obj = SceneObject("circle", "red", 10.5, 20.5, 9)  # box x 6..15, y 16..25
    image = render(Scene([obj]))
    assert image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert (image[0, 0] == BACKGROUND).all() and (image[20, 10] == PALETTE["red"]).all()
    rows, cols = np.nonzero(object_mask(obj))
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == obj.box == (6, 16, 15, 25)
    # only two colours: no anti-aliasing
    assert len(np.unique(image.reshape(-1, 3), axis=0)) == 2


def test_scenes_satisfy_world_rules():
    rng = np.random.default_rng(0)
    for meta in TEST:
        scene = scene_for(meta, rng)
        n = len(scene.objects)
        assert n == sum(req["count"] for req in meta["include"])
        lo, hi = size_range(n)
        for i, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            assert lo <= obj.size <= hi and x1 >= 0 and y1 >= 0 and x2 <= IMAGE_SIZE and y2 <= IMAGE_SIZE
            assert all(boxes_apart(obj.box, other.box, MIN_GAP) for other in scene.objects[i + 1:])
        for req in meta["include"]:
            found = [o for o in scene.objects if o.shape == req["class"]]
            assert len(found) == req["count"]
            assert all(o.color == req.get("color", o.color) for o in found)


def test_detector_exact_on_ground_truth():
    rng = np.random.default_rng(1)
    results = []
    for meta in TEST:  # 553 prompts, one scene each
        scene = scene_for(meta, rng)
        found = detect(render(scene))
        assert all(d["confidence"] == 1.0 for d in found)
        assert sorted((d["class"], d["color"], tuple(d["box"])) for d in found) == sorted(
            (o.shape, o.color, tuple(float(v) for v in o.box)) for o in scene.objects)
        results.append(score_detections(meta, found))
    assert len(results) >= 500
    assert np.mean([r["strict_accuracy"] for r in results]) >= 0.99
    assert np.mean([r["accuracy"] for r in results]) >= 0.99


def test_detector_on_garbage():
    image = np.full((32, 32, 3), BACKGROUND, dtype=np.uint8)
    image[5:15, 5:8] = PALETTE["red"]  # an "L": fills half its box like a triangle, but is not one
    image[12:15, 5:15] = PALETTE["red"]
    image[20:30, 20:30] = PALETTE["blue"]  # a square with a notch: ambiguous fill
    image[20:24, 20:24] = BACKGROUND
    image[1:3, 28:30] = PALETTE["green"]  # a 4-pixel speck: kept, but not confidently
    image[30, 0] = PALETTE["green"]  # a single pixel: ignored
    found = {d["color"]: d for d in detect(image)}
    assert set(found) == {"red", "blue", "green"}
    assert all(0 < d["confidence"] < 0.9 for d in found.values())  # none passes the counting threshold
    assert found["red"]["confidence"] <= 0.3  # dropped by GenEval's 0.3 threshold
    assert found["blue"]["mask"].sum() == 100 - 16


def test_reward_on_rendered_images():
    rng = np.random.default_rng(2)
    metas = TEST[::40]
    images = torch.stack([torch.from_numpy(render(scene_for(m, rng))).permute(2, 0, 1).float() / 255 for m in metas])
    images[0] = 1.0  # a blank white image: nothing found -> count term 1 - 1/1 = 0 (or less)
    prompts_ = [m["prompt"] for m in metas]
    train = ShapesGenEvalReward()(images, prompts_, metas)
    assert set(train) == {"shapes_geneval", "strict_accuracy"}  # training mode: no official accuracy computed
    assert all(v.shape == (len(metas),) and v.dtype == torch.float32 for v in train.values())
    assert train["shapes_geneval"][0] <= 0 and train["strict_accuracy"][0] == 0
    assert (train["shapes_geneval"][1:] == 1).all() and (train["strict_accuracy"][1:] == 1).all()
    evaluation = ShapesGenEvalReward(only_strict=False, max_workers=2)(images, prompts_, metas)
    assert (evaluation["accuracy"][1:] == 1).all() and evaluation["accuracy"][0] == 0
    assert torch.equal(evaluation["shapes_geneval"], train["shapes_geneval"])
    with pytest.raises(ValueError):
        ShapesGenEvalReward()(images, prompts_[:-1], metas)


def test_overlap_by_tag_counts_shared_prompts():
    # hand-made files: one tag fully shared, one fully held out, one half shared (3 lines, 2 distinct prompts)
    train = [{"prompt": "a", "tag": "x"}, {"prompt": "b", "tag": "z"}]
    test = [{"prompt": "a", "tag": "x"}, {"prompt": "a", "tag": "x"}, {"prompt": "c", "tag": "y"},
            {"prompt": "b", "tag": "z"}, {"prompt": "d", "tag": "z"}, {"prompt": "d", "tag": "z"}]
    assert prompts.overlap_by_tag(train, test) == {
        "x": {"lines": 2, "lines_in_train": 2, "prompts": 1, "prompts_in_train": 1},
        "y": {"lines": 1, "lines_in_train": 0, "prompts": 1, "prompts_in_train": 0},
        "z": {"lines": 3, "lines_in_train": 1, "prompts": 2, "prompts_in_train": 1},
    }


def test_held_out_tags_are_what_the_shipped_files_hold():
    overlap = prompts.overlap_by_tag(TRAIN, TEST)
    for tag in prompts.HELD_OUT_TAGS:
        assert overlap[tag]["lines_in_train"] == 0 and overlap[tag]["lines"] > 0, tag
    for tag in prompts.IN_DISTRIBUTION_TAGS:
        assert overlap[tag]["lines_in_train"] == overlap[tag]["lines"] > 0, tag
    assert set(prompts.HELD_OUT_TAGS) | set(prompts.IN_DISTRIBUTION_TAGS) == set(overlap)
