import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from rewards.ocr import OCRReward, ocr_score, ocr_target


def _render(text, size=(320, 320), font_size=44):
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    draw.text((16, size[1] // 2 - font_size // 2), text, fill="black", font=font)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


class FakeRecogniser:
    def __init__(self, lines):
        self.lines = list(lines)
        self.calls = 0

    def __call__(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        out = self.lines[self.calls]
        self.calls += 1
        if isinstance(out, Exception):
            raise out
        return out


def test_target_is_the_first_quoted_text():
    assert ocr_target('A sign saying "Hello World" and "other"') == "Hello World"
    for bad in ["no quotes here", 'one " quote only', 'empty "" target', 'blank "   " target']:
        with pytest.raises(ValueError, match="prompt"):
            ocr_target(bad)


@pytest.mark.parametrize(
    "target, lines, expected",
    [
        ("Hello World", [("HELLO", 0.9), ("world", 0.8)], 1.0),  # concatenated, spaces removed, lowercased
        ("cat", [("a big cat sign", 0.5)], 1.0),  # substring -> distance 0
        ("hello", [("hallo", 0.9)], 1 - 1 / 5),  # one substitution
        ("hello", [("hello", 0.0)], 0.0),  # confidence 0 lines are ignored -> "" -> distance 5 -> 0
        ("abc", [("xxxxxxxxxxxxxxxx", 0.9)], 0.0),  # distance capped at len(target)
        ("abcd", [("abxd", 0.9), ("zz", -1)], 0.75),
        ("abcd", [], 0.0),
    ],
)
def test_rule_on_known_answers(target, lines, expected):
    assert ocr_score(target, lines) == pytest.approx(expected)


def test_reward_with_fake_recogniser_and_failures_score_zero():
    images = torch.rand(3, 3, 24, 24)
    fake = FakeRecogniser([[("Hello", 0.9)], RuntimeError("ocr crashed"), [("helo", 0.9)]])
    out = OCRReward(recogniser=fake)(images, ['say "hello"', 'say "hello"', 'say "hello"'], [{}] * 3)
    assert out["ocr"].dtype == torch.float32 and out["ocr"].shape == (3,)
    assert out["ocr"].tolist() == pytest.approx([1.0, 0.0, 0.8])
    assert out["ocr_failed"].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(RuntimeError, match="crashed"):
        OCRReward(recogniser=FakeRecogniser([RuntimeError("crashed")]), on_error="raise")(
            images[:1], ['"x"'], [{}]
        )


def test_prompt_without_target_raises_before_any_ocr():
    fake = FakeRecogniser([])
    with pytest.raises(ValueError, match="no quotes at all"):
        OCRReward(recogniser=fake)(torch.rand(2, 3, 8, 8), ['"ok"', "no quotes at all"], [{}, {}])
    assert fake.calls == 0


def test_real_ocr_on_rendered_text():
    reward = OCRReward()  # RapidOCR, offline, CPU
    images = torch.stack([_render("Hello World"), _render("Hello World"), torch.ones(3, 320, 320)])
    prompts = ['a sign that says "Hello World"', 'a sign that says "Quantum Zebra"', 'a blank sign "text"']
    out = reward(images, prompts, [{}] * 3)["ocr"]
    assert out[0] >= 0.9
    assert out[1] <= 0.5
    assert out[2] == 0.0
