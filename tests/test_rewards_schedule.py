import pytest

from rewards import REGISTRY
from rewards.schedule import DIFFUSIONNFT_MULTI_REWARD, RewardSchedule, Stage


def test_diffusionnft_multi_reward_boundaries():
    s = DIFFUSIONNFT_MULTI_REWARD
    assert [st.epochs for st in s.stages] == [800, 300, 200, 200, 100]
    assert [st.prompt_set for st in s.stages] == ["pickscore", "geneval", "pickscore", "geneval", "ocr"]
    assert s.total_epochs == 1600
    assert s.boundaries() == [800, 1100, 1300, 1500]
    expected = {0: 0, 799: 0, 800: 1, 1099: 1, 1100: 2, 1299: 2, 1300: 3, 1499: 3, 1500: 4, 1599: 4}
    for epoch, index in expected.items():
        assert s.stage_at(epoch)[0] == index, epoch
    assert s.stage_at(1100)[1].weights == {"pickscore": 1.0, "hpsv2": 1.0, "clipscore": 1.0}
    assert s.stage_at(1500)[1].weights == {"ocr": 1.0}
    # past the end the last stage holds
    assert s.stage_at(5000)[0] == 4 and s.finished(1600) and not s.finished(1599)
    assert set(s.reward_names()) <= set(REGISTRY)


def test_parse_from_list_of_dicts_and_round_trip():
    items = [
        {"epochs": 2, "prompt_set": "pickscore", "weights": {"pickscore": 0.5, "clipscore": 0.5}},
        {"epochs": 1, "prompt_set": "ocr", "reward": "ocr:1"},
    ]
    s = RewardSchedule.from_list(items)
    assert [s.stage_at(e)[0] for e in range(4)] == [0, 0, 1, 1]
    assert s.stage_at(2)[1] == Stage(1, "ocr", {"ocr": 1.0})
    assert RewardSchedule.from_list(s.to_list()).to_list() == s.to_list()
    assert len(s) == 2


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"epochs": 0, "prompt_set": "a", "weights": {"ocr": 1}}],
        [{"epochs": 1.5, "prompt_set": "a", "weights": {"ocr": 1}}],
        [{"epochs": 1, "prompt_set": "", "weights": {"ocr": 1}}],
        [{"epochs": 1, "prompt_set": "a", "weights": {}}],
        [{"epochs": 1, "prompt_set": "a"}],
        [{"epochs": 1, "weights": {"ocr": 1}}],
        [{"epochs": 1, "prompt_set": "a", "weights": {"ocr": 1}, "typo": 3}],
        [{"epochs": 1, "prompt_set": "a", "reward": "not_a_reward"}],
    ],
)
def test_invalid_schedules_are_rejected(bad):
    with pytest.raises(ValueError):
        RewardSchedule.from_list(bad)


def test_negative_epoch():
    with pytest.raises(ValueError):
        DIFFUSIONNFT_MULTI_REWARD.stage_at(-1)
