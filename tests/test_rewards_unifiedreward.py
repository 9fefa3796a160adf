"""UnifiedReward's client against a fake OpenAI-compatible server on 127.0.0.1 (aiohttp, background thread)."""
import asyncio
import base64
import io
import socket
import threading
import time

import pytest
import torch
from aiohttp import web
from PIL import Image

from rewards.base import AsyncRewards
from rewards.unifiedreward import QUESTION, UnifiedReward, parse_score


class FakeJudge:
    def __init__(self):
        self.requests = []
        self.flaky_failures = 0
        self.active = 0
        self.max_active = 0

    async def handle(self, request):
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        message = body["messages"][0]
        assert body["temperature"] == 0 and message["role"] == "user"
        image_part, text_part = message["content"]
        assert image_part["type"] == "image_url" and text_part["type"] == "text"
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and image.size == (512, 512)
        text = text_part["text"]
        assert "assign a score from 1 to 5 after 'Final Score:'" in text
        caption = text.rsplit("Text Caption: [", 1)[1][:-1]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(0.05)
            if caption == "slow":
                await asyncio.sleep(2)
            if caption == "flaky" and self.flaky_failures == 0:
                self.flaky_failures += 1
                return web.Response(status=503, text="warming up")
            if caption == "reject":
                return web.json_response({"error": "bad request"}, status=400)
            answers = {"good": "Alignment fine.\nFinal Score: 4.5", "bad": "I cannot judge this.",
                       "flaky": "Final Score: 3", "six": "Final Score: 6"}
            content = answers.get(caption, "Final Score:5")
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})
        finally:
            self.active -= 1


@pytest.fixture
def judge():
    fake = FakeJudge()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", fake.handle)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    fake.base_url = f"http://127.0.0.1:{holder['port']}/v1"
    yield fake
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(b):
    return torch.rand(b, 3, 40, 48)


def test_parse_score():
    assert parse_score("blah Final Score: 4.5 more") == 4.5
    assert parse_score("Final Score:3") == 3.0
    assert parse_score("Final Score: 6") == 0.0 and parse_score("no score") == 0.0 and parse_score(None) == 0.0
    assert parse_score("Final Score: 5.0\nFinal Score: 1") == 5.0  # first match


def test_scores_are_parsed_and_divided_by_five(judge):
    reward = UnifiedReward(base_url=judge.base_url, api_key="k", max_concurrency=2, timeout_s=10, backoff_s=0.01)
    prompts = ["good", "bad", "six", "anything", "good"]
    out = reward(_images(5), prompts, [{}] * 5)
    assert out["unifiedreward"].tolist() == pytest.approx([0.9, 0.0, 0.0, 1.0, 0.9])
    assert out["unifiedreward_raw"].tolist() == pytest.approx([4.5, 0.0, 0.0, 5.0, 4.5])
    assert out["unifiedreward_parsed"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert len(judge.requests) == 5
    headers, body = judge.requests[0]
    assert headers["Authorization"] == "Bearer k" and body["model"] == "UnifiedReward-7b-v1.5"
    assert 1 < judge.max_active <= 2  # requests run in parallel, within the concurrency limit
    assert QUESTION.format(prompt="good") in [b["messages"][0]["content"][1]["text"] for _, b in judge.requests]


def test_a_server_error_is_retried(judge):
    reward = UnifiedReward(base_url=judge.base_url, timeout_s=10, max_retries=2, backoff_s=0.01)
    out = reward(_images(1), ["flaky"], [{}])
    assert out["unifiedreward"].tolist() == pytest.approx([0.6])
    assert judge.flaky_failures == 1 and len(judge.requests) == 2


def test_client_errors_are_not_retried(judge):
    reward = UnifiedReward(base_url=judge.base_url, timeout_s=10, max_retries=3, backoff_s=0.01)
    with pytest.raises(RuntimeError, match="HTTP 400"):
        reward(_images(1), ["reject"], [{}])
    assert len(judge.requests) == 1


def test_timeout_then_clear_error(judge):
    reward = UnifiedReward(base_url=judge.base_url, timeout_s=0.3, max_retries=1, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="TimeoutError"):
        reward(_images(1), ["slow"], [{}])
    assert time.monotonic() - t0 < 1.8


def test_absent_server_gives_a_clear_error_quickly():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    reward = UnifiedReward(base_url=url, timeout_s=2, max_retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        reward(_images(2), ["a", "b"], [{}, {}])
    assert time.monotonic() - t0 < 5
    assert url in str(info.value) and "3 attempts" in str(info.value)


def test_callable_from_a_thread_pool_and_inside_a_running_loop(judge):
    reward = UnifiedReward(base_url=judge.base_url, timeout_s=10, backoff_s=0.01)
    pool = AsyncRewards(reward, max_workers=2)
    futures = [pool.submit(_images(2), ["good", "bad"], [{}, {}]) for _ in range(2)]
    for future in futures:
        assert pool.result(future)["unifiedreward"].tolist() == pytest.approx([0.9, 0.0])
    pool.close()

    async def inside_a_loop():
        return reward(_images(1), ["good"], [{}])

    assert asyncio.run(inside_a_loop())["unifiedreward"].tolist() == pytest.approx([0.9])


def test_bad_options_and_mismatched_inputs():
    with pytest.raises(ValueError):
        UnifiedReward(max_concurrency=0)
    with pytest.raises(ValueError):
        UnifiedReward()(_images(2), ["only one"], [{}, {}])
