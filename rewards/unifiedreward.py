"""UnifiedReward: a VLM judge (UnifiedReward-7b-v1.5) behind an OpenAI-compatible chat-completions server.

Serve the model with sglang or vLLM, e.g. ``python -m sglang.launch_server --model-path
CodeGoat24/UnifiedReward-7b-v1.5 --port 17140`` or ``vllm serve CodeGoat24/UnifiedReward-7b-v1.5 --port 17140``, and
pass ``base_url="http://<host>:17140/v1"``.

One chat request per image, as in the reference: a user message with an image part (the uint8 image resized by PIL
to 512 x 512, PNG, as a base64 data URL) and a text part asking the judge to rate caption alignment and overall
quality and to "assign a score from 1 to 5 after 'Final Score:'"; temperature 0. The answer is parsed with
``Final Score:\\s*([1-5](?:\\.\\d+)?)``; ``unifiedreward = score / 5`` (0 if unparsable; reported x5).

Requests run concurrently (a semaphore of ``max_concurrency``) on an aiohttp session in an event loop owned by the
calling thread, so the reward is an ordinary synchronous callable (it is called from a thread pool). Each request has
a timeout and is retried with exponential backoff on connection errors, timeouts, HTTP 429 and 5xx; a server that
stays unreachable raises a ``ConnectionError`` naming the URL. A batch is either fully scored or raises.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import io
import json
import re

import torch
from PIL import Image

from rewards.base import check_images, to_uint8

SCORE_PATTERN = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}

QUESTION = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the "
    "provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described "
    "in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, assign a score from 1 "
    "to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)


def parse_score(text: str | None) -> float:
    """The 1..5 score after 'Final Score:', or 0.0 when there is none."""
    match = SCORE_PATTERN.search(text or "")
    return float(match.group(1)) if match else 0.0


def image_data_url(array, size: int = 512) -> str:
    """uint8 [H, W, 3] -> PIL resize to size x size (PIL's default filter) -> PNG -> base64 data URL."""
    image = Image.fromarray(array)
    if size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_request(model: str, prompt: str, data_url: str) -> dict:
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": QUESTION.format(prompt=prompt)},
                ],
            }
        ],
        "temperature": 0,
    }


def run_sync(coroutine_factory):
    """Run ``coroutine_factory()`` to completion from synchronous code: in this thread's own event loop, or in a
    helper thread when this thread already runs a loop (e.g. inside a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_factory())
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_factory())).result()


class UnifiedReward:
    """``unifiedreward`` = Final Score / 5 (training scale); diagnostics ``unifiedreward_raw`` (1..5, 0 if
    unparsable) and ``unifiedreward_parsed`` (1/0).

    Options: ``base_url`` (default ``http://127.0.0.1:17140/v1``), ``model`` (the served model name, default
    ``UnifiedReward-7b-v1.5``), ``api_key``, ``max_concurrency`` (32), ``timeout_s`` per request (120),
    ``max_retries`` (3, i.e. up to 4 attempts), ``backoff_s`` (first retry delay, doubled each retry, 1.0),
    ``image_size`` (512).
    """

    name = "unifiedreward"

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:17140/v1",
        model: str = "UnifiedReward-7b-v1.5",
        api_key: str | None = "flowgrpo",
        max_concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        image_size: int = 512,
    ):
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("unifiedreward: need max_concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.image_size = int(image_size)

    # -- the async client ------------------------------------------------------------------------------------------
    async def _post(self, session, semaphore, payload: dict) -> str:
        import aiohttp

        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), 60.0))
            try:
                async with semaphore:
                    async with session.post(self.url, json=payload) as response:
                        body = await response.text()
                        if response.status in RETRY_STATUS:
                            last_error = f"HTTP {response.status}: {body[:300]}"
                            continue
                        if response.status != 200:
                            raise RuntimeError(
                                f"unifiedreward server {self.url} rejected the request: HTTP {response.status}: "
                                f"{body[:500]}"
                            )
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                last_error = f"{type(e).__name__}: {e}"
                continue
            try:
                message = json.loads(body)["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise RuntimeError(
                    f"unifiedreward server {self.url} sent a reply that is not a chat completion: {body[:300]!r}"
                ) from e
            return message.get("content") or ""
        raise ConnectionError(
            f"unifiedreward server {self.url} failed {self.max_retries + 1} attempts (last: {last_error}). Is the "
            f"OpenAI-compatible server (sglang / vLLM) running at base_url={self.base_url!r}?"
        )

    async def _judge_all(self, payloads: list[dict]) -> list[str]:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
            tasks = [asyncio.ensure_future(self._post(session, semaphore, p)) for p in payloads]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def judge(self, images: torch.Tensor, prompts: list[str]) -> list[str]:
        """The judge's raw answers, one per image."""
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"unifiedreward got {images.shape[0]} images and {len(prompts)} prompts")
        payloads = [
            chat_request(self.model, prompt, image_data_url(array, self.image_size))
            for array, prompt in zip(to_uint8(images).numpy(), prompts)
        ]
        return run_sync(lambda: self._judge_all(payloads))

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        answers = self.judge(images, list(prompts))
        raw = torch.tensor([parse_score(a) for a in answers], dtype=torch.float32)
        parsed = torch.tensor([float(SCORE_PATTERN.search(a or "") is not None) for a in answers])
        return {self.name: raw / 5.0, "unifiedreward_raw": raw, "unifiedreward_parsed": parsed}
