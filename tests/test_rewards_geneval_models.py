"""GenEval at paper scale: post-processing on stub outputs with known answers, the colour crop on a known image,
and the whole path on a tiny random Mask2Former (Swin) + tiny CLIP saved to disk and loaded back."""
import numpy as np
import pytest
import torch

from rewards.clip_rewards import save_tiny_clip
from rewards.geneval import score_detections
from rewards.geneval_models import (
    COLOR_TEMPLATES,
    COLORS,
    ColorClassifier,
    GenEvalReward,
    color_crop,
    geneval_name,
    jpeg_round_trip,
    mask2former_instances,
    masks_to_boxes,
)

LABELS = ["person", "cat", "mouse", "remote", "keyboard"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerImageProcessor, SwinConfig
    from transformers import Mask2FormerForUniversalSegmentation

    root = tmp_path_factory.mktemp("geneval_models")
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = dict(enumerate(LABELS))
    config = Mask2FormerConfig(
        backbone_config=swin, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        hidden_dim=32, num_queries=8, encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=32,
        dim_feedforward=32, mask_feature_size=32, feature_size=32, num_attention_heads=2, common_stride=4,
        use_timm_backbone=False,
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config)
    with torch.no_grad():  # make "cat" the confident class of every query so detections (and colours) happen
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[1] = 8.0
    model.save_pretrained(root / "m2f")
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32).save_pretrained(
        root / "m2f"
    )
    return str(root / "m2f"), save_tiny_clip(str(root / "clip"))


def test_class_names_follow_geneval():
    assert [geneval_name(n) for n in LABELS] == ["person", "cat", "computer mouse", "tv remote", "computer keyboard"]
    assert geneval_name("dining table") == "dining table" and geneval_name("hair dryer") == "hair drier"


def test_masks_to_boxes_is_mmdets_mask2bbox():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    assert masks_to_boxes(masks).tolist() == [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]]


def test_instance_postprocessing_known_answer():
    # 3 queries, 2 classes (+ no-object); masks at the input resolution; the lower half of the input is padding
    class_logits = torch.tensor([[0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [0.2, -5.0, -0.2]])
    mask_logits = torch.full((3, 16, 8), -10.0)
    mask_logits[0, 2:5, 1:4] = 10.0
    mask_logits[0, 8:, :] = 10.0  # padding: must be cropped away
    mask_logits[2, 0:2, 0:8] = 10.0
    inst = mask2former_instances(class_logits, mask_logits, valid_hw=(8, 8), input_hw=(16, 8), output_hw=(8, 8))
    p_cat = torch.softmax(class_logits[0], -1)[1]
    assert inst["labels"].tolist() == [1, 0]  # query 1 is "no object"; query 2's class 0 prob is 0.53
    assert inst["boxes"][0].tolist() == [1, 2, 4, 5]
    assert inst["masks"].shape == (2, 8, 8) and inst["masks"][0].sum() == 9
    assert inst["scores"][0] == pytest.approx(float(p_cat * torch.sigmoid(torch.tensor(10.0))), rel=1e-5)
    p_other = torch.softmax(class_logits[2], -1)[0]
    assert inst["scores"][1] == pytest.approx(float(p_other * torch.sigmoid(torch.tensor(10.0))), rel=1e-5)
    # probabilities <= 0.3 never become detections; empty result keeps the shapes
    weak = torch.tensor([[0.0, 0.0, 2.0]])  # class probabilities 0.11
    empty = mask2former_instances(weak, torch.zeros(1, 4, 4), valid_hw=(4, 4), input_hw=(4, 4), output_hw=(6, 6))
    assert empty["scores"].shape == (0,) and empty["masks"].shape == (0, 6, 6)


def test_instance_postprocessing_resizes_to_the_original_image():
    class_logits = torch.tensor([[10.0, 0.0]])
    mask_logits = torch.full((1, 4, 4), -10.0)
    mask_logits[0, :2, :2] = 10.0  # top-left quarter of the network input
    inst = mask2former_instances(class_logits, mask_logits, valid_hw=(16, 16), input_hw=(16, 16), output_hw=(40, 40))
    x1, y1, x2, y2 = inst["boxes"][0].tolist()
    assert (x1, y1) == (0, 0) and 18 <= x2 <= 22 and 18 <= y2 <= 22


def test_color_crop_masks_over_grey_and_crops_to_the_box():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[2:6, 3:8] = (255, 0, 0)
    image[0, 0] = (0, 255, 0)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 3:8] = True
    tight = np.asarray(color_crop(image, [3, 2, 8, 6], mask))
    assert tight.shape == (4, 5, 3) and (tight == (255, 0, 0)).all()
    wide = np.asarray(color_crop(image, [0, 0, 10, 10], mask))
    assert (wide[0, 0] == (153, 153, 153)).all() and (wide[3, 4] == (255, 0, 0)).all()
    assert (np.asarray(color_crop(image, [0, 0, 2, 2], None))[0, 0] == (0, 255, 0)).all()  # no mask: as is
    assert np.asarray(color_crop(image, [2.6, 1.5, 8.4, 6.4], mask)).shape == (4, 5, 3)  # PIL rounds the box
    with pytest.raises(ValueError):
        color_crop(image, [0, 0, 2, 2], np.zeros((3, 3), dtype=bool))


class _StubClip:
    """Text -> one-hot of the colour word; image -> one-hot of its nearest reference colour."""

    REF = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}

    def __init__(self):
        self.texts = []

    def embed_text(self, texts):
        self.texts += texts
        out = torch.zeros(len(texts), len(COLORS))
        for i, t in enumerate(texts):
            words = t.replace("-colored", " ").split()
            out[i, [j for j, c in enumerate(COLORS) if c in words][0]] = 1.0
        return out

    def embed_pil(self, crops):
        out = torch.zeros(len(crops), len(COLORS))
        for i, crop in enumerate(crops):
            mean = np.asarray(crop, dtype=float).reshape(-1, 3).mean(0)
            name = min(self.REF, key=lambda c: np.abs(mean - self.REF[c]).sum())
            out[i, COLORS.index(name)] = 1.0
        return out


def test_color_classifier_templates_and_argmax():
    stub = _StubClip()
    clf = ColorClassifier(stub)
    solid = lambda rgb: color_crop(np.full((6, 6, 3), rgb, dtype=np.uint8), [0, 0, 6, 6])  # noqa: E731
    assert clf([solid((250, 10, 10)), solid((10, 10, 240)), solid((240, 240, 240))], "cat") == ["red", "blue", "white"]
    assert stub.texts[:3] == ["a photo of a red cat", "a photo of a red-colored cat", "a photo of a red object"]
    assert len(stub.texts) == len(COLORS) * len(COLOR_TEMPLATES)
    clf([solid((0, 150, 0))], "cat")
    assert len(stub.texts) == len(COLORS) * len(COLOR_TEMPLATES)  # cached per class
    assert clf([], "dog") == []


def _det(cls, conf, box, color=None):
    return {"class": cls, "confidence": conf, "box": box, "color": color, "mask": None}


def test_scoring_integration_with_stub_detections():
    reward = GenEvalReward(only_strict=False, device="cpu")
    coloured = []

    def fake_colors(crops, cls):
        coloured.append((cls, len(crops)))
        return ["red"] * len(crops)

    reward.colors = fake_colors
    dets = [[_det("cat", 0.9, [0, 0, 4, 4]), _det("cat", 0.2, [4, 4, 8, 8]), _det("dog", 0.8, [0, 0, 2, 2])],
            [_det("cat", 0.95, [0, 0, 4, 4]), _det("cat", 0.5, [4, 0, 8, 4])]]
    reward.detect = lambda pixels: [[dict(d) for d in image] for image in dets]
    metadata = [
        {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
         "prompt": "two cats"},
    ]
    out = reward(torch.rand(2, 3, 8, 8), ["a red cat", "two cats"], metadata)
    assert set(out) == {"geneval", "accuracy", "strict_accuracy"} and out["geneval"].dtype == torch.float32
    assert coloured == [("cat", 1)]  # only confident detections of colour-asked classes are classified
    expected0 = score_detections(metadata[0], [_det("cat", 0.9, [0, 0, 4, 4], "red"), dets[0][1], dets[0][2]])
    expected1 = score_detections(metadata[1], dets[1])  # counting threshold 0.9: one cat -> partial credit
    assert out["geneval"].tolist() == pytest.approx([expected0["score"], expected1["score"]])
    assert out["accuracy"].tolist() == [1.0, 0.0] and out["strict_accuracy"].tolist() == [1.0, 0.0]
    assert expected1["score"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metadata"):
        reward(torch.rand(1, 3, 8, 8), ["x"], [{"prompt": "no tag"}])


def test_jpeg_round_trip_option():
    pixels = (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    out = jpeg_round_trip(pixels, 75)
    assert out.shape == pixels.shape and out.dtype == np.uint8 and not np.array_equal(out, pixels)
    seen = []
    reward = GenEvalReward(jpeg_quality=75, device="cpu")
    reward.detect = lambda px: seen.append(px) or [[] for _ in px]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}
    assert reward(images, ["a cat"] * 2, [meta] * 2)["geneval"].tolist() == [0.0, 0.0]
    assert np.array_equal(seen[0], out)
    with pytest.raises(ValueError):
        GenEvalReward(jpeg_quality=0)


def test_tiny_mask2former_and_clip_through_the_real_loading_path(tiny_models):
    detector, clip = tiny_models
    kwargs = dict(detector=detector, clip_model=clip, detector_size=None, device="cpu", only_strict=False)
    reward = GenEvalReward(batch_size=1, **kwargs)
    assert reward.class_names == ["person", "cat", "computer mouse", "tv remote", "computer keyboard"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 80, generator=g)
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    detections = reward.detect(pixels)
    assert len(detections) == 3 and any(detections)
    for dets in detections:
        for d in dets:
            assert d["class"] == "cat" and 0.3 < d["confidence"] <= 1 and d["color"] is None
            assert d["mask"].shape == (48, 80) and d["mask"].dtype == bool
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 48
        assert [d["confidence"] for d in dets] == sorted((d["confidence"] for d in dets), reverse=True)
    meta = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"}
    out = reward(images, ["a red cat"] * 3, [meta] * 3)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: ((3,), torch.float32) for k in ("geneval", "accuracy", "strict_accuracy")
    }
    dets = reward.detect(pixels[:1])[0]
    reward.classify_colors(pixels[0], dets, meta)
    assert all(d["color"] in COLORS for d in dets)  # the tiny CLIP classified every confident cat
    batched = GenEvalReward(batch_size=3, **kwargs)(images, ["a red cat"] * 3, [meta] * 3)
    for key in out:
        assert torch.allclose(out[key], batched[key]), key
    assert GenEvalReward(detector_channel_order="bgr", batch_size=3, **kwargs)(images, ["x"] * 3, [meta] * 3)[
        "geneval"
    ].shape == (3,)


def test_missing_detector_names_the_option(tmp_path):
    reward = GenEvalReward(detector=str(tmp_path / "no" / "such" / "detector"), device="cpu")
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}
    with pytest.raises(FileNotFoundError, match="detector="):
        reward(torch.rand(1, 3, 8, 8), ["a cat"], [meta])
