"""hpsv2 and imagereward are optional extras: a clear ImportError without them, and their logic on stand-ins."""
import sys
import types

import pytest
import torch
import torch.nn as nn
from PIL import Image

from rewards import build_reward
from rewards.hpsv2 import OPENAI_MEAN, OPENAI_STD, HPSv2Reward, hps_preprocess, import_open_clip
from rewards.imagereward import ImageRewardReward


@pytest.fixture
def no_open_clip(monkeypatch):
    for name in ("open_clip", "hpsv2", "hpsv2.src", "hpsv2.src.open_clip"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError


def test_hpsv2_without_open_clip_names_the_extra(no_open_clip):
    # fails fast, when the reward is built, not minutes later at the first scoring
    with pytest.raises(ImportError, match=r"flowrl-bench\[hpsv2\]"):
        HPSv2Reward(device="cpu")
    with pytest.raises(ImportError, match=r"flowrl-bench\[hpsv2\]"):
        build_reward("hpsv2", options={"hpsv2": {"device": "cpu"}})
    with pytest.raises(ImportError, match=r"flowrl-bench\[hpsv2\]"):
        import_open_clip()


def test_imagereward_without_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)
    with pytest.raises(ImportError, match=r"flowrl-bench\[imagereward\]"):
        ImageRewardReward(device="cpu")
    with pytest.raises(ImportError, match=r"flowrl-bench\[imagereward\]"):
        build_reward("imagereward")


def test_hps_preprocess_known_values():
    x = torch.full((2, 3, 100, 60), 0.25)
    out = hps_preprocess(x)
    assert out.shape == (2, 3, 224, 224)
    expected = (0.25 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(out[0, :, 111, 7], expected, atol=1e-5)
    with pytest.raises(ValueError):
        hps_preprocess(torch.rand(3, 16, 16))


class _FakeClip(nn.Module):
    """Image feature = mean colour per channel (3-d); text feature = fixed per prompt length."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def encode_image(self, pixels):
        assert pixels.shape[1:] == (3, 224, 224)
        return self.scale * pixels.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return tokens.float()


def _fake_open_clip(loaded):
    def create_model(arch, pretrained=None):
        assert arch == "ViT-H-14" and pretrained is None
        model = _FakeClip()
        original = model.load_state_dict

        def load_state_dict(state, *a, **k):
            loaded.append(sorted(state))
            return original(state, *a, **k)

        model.load_state_dict = load_state_dict
        return model

    def get_tokenizer(arch):
        # "text" feature: red-ish for prompts containing "red", blue-ish otherwise
        return lambda prompts: torch.tensor([[1.0, 0.0, 0.0] if "red" in p else [0.0, 0.0, 1.0] for p in prompts])

    return types.SimpleNamespace(create_model=create_model, get_tokenizer=get_tokenizer)


def test_hpsv2_scoring_logic_on_a_stand_in_open_clip(monkeypatch, tmp_path):
    loaded = []
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip(loaded))
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"scale": torch.tensor(2.0)}}, ckpt)
    reward = HPSv2Reward(checkpoint=str(ckpt), device="cpu", batch_size=1)
    red, blue = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    red[0], blue[2] = 1.0, 1.0
    images = torch.stack([red, blue, red])
    out = reward(images, ["a red box", "a red box", "a blue box"], [{}] * 3)["hpsv2"]
    assert loaded == [["scale"]]
    assert out.shape == (3,)
    # cosine of the normalised mean (pre-processed) colour with the prompt's axis: matched pairs score highest
    pre = torch.nn.functional.normalize(hps_preprocess(images).mean(dim=(2, 3)), dim=-1)
    axes = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    assert torch.allclose(out, (pre * axes).sum(-1), atol=1e-5)
    assert out[0] > out[1]


def test_hpsv2_missing_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", _fake_open_clip([]))
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*huggingface-cli download xswu/HPSv2"):
        HPSv2Reward(checkpoint=str(tmp_path / "none.pt"), device="cpu")(torch.rand(1, 3, 8, 8), ["x"], [{}])
    with pytest.raises(ValueError):
        HPSv2Reward(version="v3")


def test_imagereward_scores_each_pair_on_the_uint8_image(monkeypatch):
    seen = []

    class FakeModel:
        def eval(self):
            return self

        def requires_grad_(self, flag):
            return self

        def to(self, **kwargs):
            return self

        def score(self, prompt, image):
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            seen.append((prompt, image.getpixel((0, 0))))
            return len(prompt) / 10

    fake = types.SimpleNamespace(load=lambda name, **kw: FakeModel())
    monkeypatch.setitem(sys.modules, "ImageReward", fake)
    images = torch.zeros(2, 3, 4, 4)
    images[1] = 0.5
    out = ImageRewardReward(device="cpu")(images, ["abc", "abcdefghij"], [{}] * 2)["imagereward"]
    assert out.tolist() == pytest.approx([0.3, 1.0])
    assert seen == [("abc", (0, 0, 0)), ("abcdefghij", (128, 128, 128))]


def test_imagereward_load_failure_explains(monkeypatch):
    def load(name, **kw):
        raise RuntimeError("offline")

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download THUDM/ImageReward"):
        ImageRewardReward(device="cpu")(torch.rand(1, 3, 4, 4), ["x"], [{}])
