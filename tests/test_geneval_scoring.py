"""GenEval scoring rules on hand-made detections; every expected value is worked out by hand in the comments."""
from __future__ import annotations

import numpy as np
import pytest

from rewards.geneval import evaluation_report, format_report, relative_position, score_detections


def det(cls: str, box, conf: float = 0.99, color: str = "red") -> dict:
    return {"class": cls, "box": [float(v) for v in box], "confidence": conf, "color": color}


def scores(meta, dets, **kw):
    out = score_detections(meta, dets, **kw)
    return out["accuracy"], out["strict_accuracy"], out["score"]


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
COUNT2 = {
    "tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}],
    "prompt": "a photo of two circles",
}
RED_CIRCLE = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "x"}
# circle left of square: include 1 ("circle") holds the relation against include 0 ("square").
LEFT = {
    "tag": "position",
    "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    "prompt": "a photo of a circle left of a square",
}
SQUARE = det("square", [10, 10, 20, 20])  # centre (15, 15), 10 x 10


# --- thresholds -----------------------------------------------------------------------------------------------

def test_confidence_exactly_float32_point3_is_dropped():
    assert scores(SINGLE, [det("circle", [0, 0, 8, 8], conf=float(np.float32(0.3)))]) == (0.0, 0.0, 0.0)
    # 0.30000001 > 0.3 in float64, but it rounds to float32(0.3): the reference's float32 comparison drops it.
    assert scores(SINGLE, [det("circle", [0, 0, 8, 8], conf=0.30000001)]) == (0.0, 0.0, 0.0)
    just_above = float(np.nextafter(np.float32(0.3), np.float32(1)))
    assert scores(SINGLE, [det("circle", [0, 0, 8, 8], conf=just_above)]) == (1.0, 1.0, 1.0)


def test_counting_tag_uses_threshold_point9():
    dets = [det("circle", [0, 0, 8, 8], 0.95), det("circle", [20, 0, 28, 8], 0.95), det("circle", [0, 20, 8, 28], 0.8)]
    # counting: the 0.8 circle is not counted -> exactly 2.
    assert scores(COUNT2, dets) == (1.0, 1.0, 1.0)
    # same include under another tag: threshold 0.3, 3 circles -> strict fails; score 1 - |2 - 3| / 2 = 0.5;
    # accuracy takes the top 2 and has no exclude -> correct.
    other_tag = {**COUNT2, "tag": "two_object", "exclude": []}
    assert scores(other_tag, dets) == (1.0, 0.0, 0.5)
    # exactly float32(0.9) is dropped in counting too: 1 circle found -> score 1 - 1/2.
    at_point9 = [det("circle", [0, 0, 8, 8], 0.95), det("circle", [20, 0, 28, 8], float(np.float32(0.9)))]
    assert scores(COUNT2, at_point9) == (0.0, 0.0, 0.5)


def test_at_most_16_detections_per_class():
    dets = [det("circle", [i, 0, i + 1, 1], conf=0.5 + i / 100) for i in range(20)]
    # 16 kept, not 20: score 1 - |1 - 16| / 1 = -14 (negative); official accuracy takes the top 1 -> correct.
    assert scores(SINGLE, dets) == (1.0, 0.0, -14.0)


# --- counting ---------------------------------------------------------------------------------------------------

def circles(n: int) -> list[dict]:
    return [det("circle", [9 * i, 0, 9 * i + 8, 8], 0.95) for i in range(n)]


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, (0.0, 0.0, 0.0)),  # 1 - 2/2
        (1, (0.0, 0.0, 0.5)),  # fewer than 2: accuracy fails; 1 - 1/2
        (2, (1.0, 1.0, 1.0)),
        (3, (0.0, 0.0, 0.5)),  # exclude (>= 3) fails accuracy; 1 - 1/2
        (4, (0.0, 0.0, 0.0)),  # 1 - 2/2
        (5, (0.0, 0.0, -0.5)),  # 1 - 3/2: negative
    ],
)
def test_counting_too_few_and_too_many(n, expected):
    assert scores(COUNT2, circles(n)) == expected


def test_exclude_only_affects_official_accuracy():
    meta = {**SINGLE, "exclude": [{"class": "square", "count": 1}]}
    dets = [det("circle", [0, 0, 8, 8]), det("square", [20, 20, 28, 28])]
    # one square is ">= 1": accuracy fails; strict ignores excludes; score has one term, 1 - 0 = 1.
    assert scores(meta, dets) == (0.0, 1.0, 1.0)
    assert scores(meta, dets[:1]) == (1.0, 1.0, 1.0)


# --- colour -----------------------------------------------------------------------------------------------------

def test_colour_mismatch():
    # count right, colour wrong: terms [1, 1 - 1/1 = 0] -> 0.5
    assert scores(RED_CIRCLE, [det("circle", [0, 0, 8, 8], color="blue")]) == (0.0, 0.0, 0.5)
    two_colours = {
        "tag": "color_attr",
        "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
        "prompt": "x",
    }
    dets = [det("circle", [0, 0, 8, 8], color="red"), det("square", [20, 20, 28, 28], color="red")]
    # terms [1, 1, 1, 0] -> 0.75
    assert scores(two_colours, dets) == (0.0, 0.0, 0.75)


def test_colour_with_wrong_count_uses_the_most_confident_for_accuracy():
    # Two circles: strict count fails -> terms [1 - 1/1 = 0, 0] -> 0; accuracy looks at the most confident only.
    red_first = [det("circle", [0, 0, 8, 8], 0.9, "red"), det("circle", [20, 0, 28, 8], 0.8, "blue")]
    assert scores(RED_CIRCLE, red_first) == (1.0, 0.0, 0.0)
    blue_first = [det("circle", [0, 0, 8, 8], 0.7, "red"), det("circle", [20, 0, 28, 8], 0.8, "blue")]
    assert scores(RED_CIRCLE, blue_first) == (0.0, 0.0, 0.0)


# --- position ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "box, relations",
    [
        # offset (12, 0); shrink 0.1 * (10 + 10) = 2 -> (10, 0) / 12 = (0.83, 0)
        ([22, 10, 32, 20], {"right of"}),
        ([-2, 10, 8, 20], {"left of"}),
        ([10, -2, 20, 8], {"above"}),
        ([10, 22, 20, 32], {"below"}),
        # offset (12, 12): shrunk (10, 10) / 16.97 = (0.59, 0.59): two relations
        ([22, 22, 32, 32], {"right of", "below"}),
        # offset (1.5, -1): inside the 2-pixel shrink on both axes -> no relation at all
        ([11.5, 9, 21.5, 19], set()),
        # offset (3, 0): shrunk (1, 0) / 3 = 0.33 < 0.5 -> no relation
        ([13, 10, 23, 20], set()),
        # offset (6, 8), norm 10: shrunk (4, 6) / 10 = (0.4, 0.6) -> only "below". (Dividing by the shrunk
        # offset's norm instead, 7.2, would give (0.55, 0.83) and add "right of".)
        ([16, 18, 26, 28], {"below"}),
    ],
)
def test_relative_position(box, relations):
    assert relative_position(box, SQUARE["box"]) == relations


def test_position_each_relation_in_scoring():
    for relation, box in [("left of", [0, 10, 8, 18]), ("right of", [24, 12, 32, 20]),
                          ("above", [12, 0, 20, 8]), ("below", [10, 24, 18, 32])]:
        meta = {**LEFT, "include": [LEFT["include"][0], {"class": "circle", "count": 1, "position": [relation, 0]}]}
        assert scores(meta, [SQUARE, det("circle", box)]) == (1.0, 1.0, 1.0), relation


def test_position_quirk_versus_fixed():
    wrong = [SQUARE, det("circle", [24, 12, 32, 20])]  # right of the square, not left
    # reference quirk: terms [1, 1, 0, 1.0] -> 0.75; fixed: [1, 1, 0] -> 2/3
    assert scores(LEFT, wrong) == (0.0, 0.0, 0.75)
    assert scores(LEFT, wrong, fixed_position=True) == (0.0, 0.0, pytest.approx(2 / 3))
    right = [SQUARE, det("circle", [0, 10, 8, 18])]
    assert scores(LEFT, right) == scores(LEFT, right, fixed_position=True) == (1.0, 1.0, 1.0)
    # no relation (offsets inside the shrink margin) fails like a wrong one
    overlapping = [SQUARE, det("circle", [11, 11, 19, 19])]
    assert scores(LEFT, overlapping) == (0.0, 0.0, 0.75)


def test_position_target_missing_or_count_wrong():
    # no square: [1 - 1/1 = 0]; circle count ok [1]; target failed -> one 0 only (no quirk 1.0): 1/3 both ways
    only_circle = [det("circle", [0, 10, 8, 18])]
    assert scores(LEFT, only_circle) == (0.0, 0.0, pytest.approx(1 / 3))
    assert scores(LEFT, only_circle, fixed_position=True) == (0.0, 0.0, pytest.approx(1 / 3))
    # two circles, the most confident left of the square: terms [1, 1 - 1/1 = 0, 0] -> 1/3; accuracy uses top 1
    two = [SQUARE, det("circle", [0, 10, 8, 18], 0.9), det("circle", [24, 12, 32, 20], 0.8)]
    assert scores(LEFT, two) == (1.0, 0.0, pytest.approx(1 / 3))


def test_position_not_scored_when_colour_fails():
    meta = {**LEFT, "include": [LEFT["include"][0], {**LEFT["include"][1], "color": "red"}]}
    # colour fails -> terms [1, 1, 0] and no position term at all, even in the quirk: 2/3
    assert scores(meta, [SQUARE, det("circle", [0, 10, 8, 18], color="blue")]) == (0.0, 0.0, pytest.approx(2 / 3))


def test_only_strict_forces_accuracy_to_zero():
    good = [det("circle", [0, 0, 8, 8])]
    assert scores(SINGLE, good, only_strict=True) == (0.0, 1.0, 1.0)
    assert scores(SINGLE, good) == (1.0, 1.0, 1.0)


# --- report -----------------------------------------------------------------------------------------------------

def test_evaluation_report_tag_mean_versus_image_mean():
    rows = [
        {"tag": "single_object", "accuracy": 1.0, "strict_accuracy": 1.0, "score": 1.0},
        {"tag": "single_object", "accuracy": 1.0, "strict_accuracy": 0.0, "score": 0.5},
        {"tag": "single_object", "accuracy": 0.0, "strict_accuracy": 0.0, "score": 0.0},
        {"tag": "counting", "accuracy": 0.0, "strict_accuracy": 0.0, "score": -0.5},
    ]
    report = evaluation_report(rows)
    assert report["per_tag"]["single_object"] == {"n_images": 3, "accuracy": pytest.approx(2 / 3),
                                                  "strict_accuracy": pytest.approx(1 / 3), "score": 0.5}
    # tag mean: (2/3 + 0) / 2 = 1/3; image mean: 2 / 4 = 0.5
    assert report["geneval_overall_tag_mean"]["accuracy"] == pytest.approx(1 / 3)
    assert report["per_image_mean"]["accuracy"] == pytest.approx(0.5)
    # score: tag mean (0.5 + -0.5) / 2 = 0; image mean (1 + 0.5 + 0 - 0.5) / 4 = 0.25
    assert report["geneval_overall_tag_mean"]["score"] == pytest.approx(0.0)
    assert report["per_image_mean"]["score"] == pytest.approx(0.25)
    assert report["missing_tags"] == ["two_object", "colors", "position", "color_attr"]
    text = format_report(report)
    assert "mean of tags (official)" in text and "mean of images" in text and "0.3333" in text
