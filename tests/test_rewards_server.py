"""The reward server (subprocess on 127.0.0.1, free port) and its client; every loop here is bounded."""
import base64
import io
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import build_reward
from rewards.server import RemoteReward, RemoteRewardError, RewardServerUnreachable, encode_images, make_server
from rewards.simple import Brightness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(rewards: str, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stderr = open(tmp_path / f"server-{rewards.replace(',', '_')}.err", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewards.server", "--reward", rewards, "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=90)
    except queue.Empty:
        proc.kill()
        pytest.fail("reward server did not start within 90 s")
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        proc.wait(10)
        stderr.seek(0)
        pytest.fail(f"reward server failed to start: {line!r} {stderr.read()[-2000:]}")
    return proc, match.group(1)


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = _start("jpeg_compressibility,brightness", tmp_path_factory.mktemp("server"))
    yield url
    _stop(proc)


def _images(b=5, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g) * 255).round() / 255  # on the uint8 grid: PNG is exact


def _post(url, body: bytes, path="/score", method="POST"):
    request = urllib.request.Request(url + path, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health(server):
    client = RemoteReward(server)
    reply = client.health()
    assert reply["status"] == "ok" and reply["rewards"] == ["brightness", "jpeg_compressibility"]


def test_scores_match_in_process_with_chunking(server):
    images = _images(5)
    prompts, metadata = [f"p{i}" for i in range(5)], [{"i": i} for i in range(5)]
    for spec in ["jpeg_compressibility", "brightness", "jpeg_compressibility:0.5,brightness:2"]:
        local = build_reward(spec)(images, prompts, metadata)
        remote = RemoteReward(server, spec, batch_size=2)(images, prompts, metadata)
        assert set(remote) == set(local) | {"remote"}
        for key, value in local.items():
            assert remote[key].shape == (5,)
            assert torch.allclose(remote[key], value, rtol=0, atol=1e-12), (spec, key)
        assert torch.equal(remote["remote"], remote["avg"])


def test_jpeg_wire_format_scores_the_round_tripped_image(server):
    images = _images(3)
    remote = RemoteReward(server, "brightness", image_format="jpeg", jpeg_quality=75)(images, ["a"] * 3, [{}] * 3)
    decoded = []
    for b64 in encode_images(images, "jpeg", 75):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            decoded.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255)
    expected = Brightness()(torch.stack(decoded), None, None)["brightness"].double()
    assert torch.allclose(remote["brightness"], expected, atol=1e-12)


def test_malformed_requests_get_4xx_with_a_message(server):
    good_image = encode_images(_images(1))[0]
    cases = [
        (b"not json", 400, "not JSON"),
        (json.dumps([1, 2]).encode(), 400, "JSON object"),
        (json.dumps({"reward": "brightness"}).encode(), 400, "images"),
        (json.dumps({"reward": "brightness", "images": ["@@@"]}).encode(), 400, "base64"),
        (json.dumps({"reward": "brightness", "images": [base64.b64encode(b"GIF89a").decode()]}).encode(), 400,
         "images[0]"),
        (json.dumps({"reward": "nope", "images": [good_image]}).encode(), 404, "not hosted"),
        (json.dumps({"images": [good_image]}).encode(), 400, "reward"),
        (json.dumps({"reward": "brightness", "images": [good_image], "prompts": ["a", "b"]}).encode(), 400,
         "prompts"),
        (json.dumps({"reward": "brightness:x", "images": [good_image]}).encode(), 400, "not a number"),
        (json.dumps({"reward": "brightness", "images": [good_image], "extra": 1}).encode(), 400, "unknown"),
    ]
    for body, status, text in cases:
        code, reply = _post(server, body)
        assert code == status and text in reply["error"], (body[:60], code, reply)
    assert _post(server, b"{}", path="/nowhere")[0] == 404
    assert _post(server, b"{}", method="PUT")[0] == 405
    # the client raises at once on a 4xx, naming the URL, without retrying
    with pytest.raises(RemoteRewardError, match=re.escape(server)):
        RemoteReward(server, "nope", backoff_s=5)(_images(1), ["a"], [{}])


def test_client_validates_inputs(server):
    with pytest.raises(ValueError):
        RemoteReward(server, "brightness")(_images(2), ["a"], [{}, {}])
    with pytest.raises(TypeError, match="JSON"):
        RemoteReward(server, "brightness")(_images(1), ["a"], [{"bad": object()}])
    meta = [{"n": np.int64(3), "arr": np.arange(2), "t": (1, "x")}]
    assert RemoteReward(server, "brightness")(_images(1), ["a"], meta)["remote"].shape == (1,)
    with pytest.raises(ValueError):
        RemoteReward(server, image_format="gif")


class _Flaky:
    name = "flaky"

    def __init__(self, fail_on):
        self.calls = 0
        self.fail_on = set(fail_on)

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"flaky exploded on call {self.calls}")
        return {"flaky": images.mean(dim=(1, 2, 3))}


@pytest.fixture
def in_thread_server():
    servers = []

    def start(rewards):
        srv = make_server(rewards, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_reward_exception_is_a_500_with_its_text_and_is_retried(in_thread_server):
    flaky = _Flaky(fail_on={1})
    url = in_thread_server({"flaky": flaky})
    out = RemoteReward(url, max_retries=2, backoff_s=0.01)(_images(3), ["a"] * 3, [{}] * 3)
    assert flaky.calls == 2 and out["flaky"].shape == (3,)
    code, reply = _post(url, json.dumps({"images": encode_images(_images(1))}).encode())
    assert code == 200
    always = in_thread_server({"flaky": _Flaky(fail_on=range(1, 100))})
    code, reply = _post(always, json.dumps({"images": encode_images(_images(1))}).encode())
    assert code == 500 and "flaky exploded" in reply["error"]


def test_a_batch_is_fully_scored_or_raises(in_thread_server):
    # the second chunk fails on every attempt: the client raises instead of returning 3 of 5 scores
    flaky = _Flaky(fail_on={2, 3})
    url = in_thread_server({"flaky": flaky})
    with pytest.raises(RemoteRewardError, match="flaky exploded") as info:
        RemoteReward(url, batch_size=3, max_retries=1, backoff_s=0.01)(_images(5), ["a"] * 5, [{}] * 5)
    assert url in str(info.value) and flaky.calls == 3


def test_killed_server_gives_a_clear_error(tmp_path):
    proc, url = _start("brightness", tmp_path)
    try:
        client = RemoteReward(url, timeout_s=5, max_retries=2, backoff_s=0.05)
        assert client(_images(2), ["a", "b"], [{}, {}])["remote"].shape == (2,)
    finally:
        proc.kill()
        proc.wait(10)
    t0 = time.monotonic()
    with pytest.raises(RewardServerUnreachable) as info:
        client(_images(2), ["a", "b"], [{}, {}])
    assert time.monotonic() - t0 < 10
    assert url in str(info.value) and "3 attempts" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_shapes_geneval_remote_matches_in_process(tmp_path):
    pytest.importorskip("worlds.shapes.reward")
    from worlds.shapes.reward import ShapesGenEvalReward

    proc, url = _start("shapes_geneval", tmp_path)
    try:
        metadata = [
            {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
            {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
             "prompt": "a photo of a red square"},
            {"tag": "counting", "include": [{"class": "triangle", "count": 2}],
             "exclude": [{"class": "triangle", "count": 3}], "prompt": "a photo of two triangles"},
        ]
        images = _images(3, 32, 32)
        images[1, :, 8:20, 8:20] = torch.tensor([220, 40, 40]).view(3, 1, 1) / 255
        prompts = [m["prompt"] for m in metadata]
        local = ShapesGenEvalReward()(images, prompts, metadata)
        remote = RemoteReward(url, "shapes_geneval", batch_size=2)(images, prompts, metadata)
        for key, value in local.items():
            name = key if key == "shapes_geneval" else f"shapes_geneval/{key}"
            assert torch.allclose(remote[name], value.double()), key
    finally:
        _stop(proc)


def test_registry_builds_the_remote_client(server):
    reward = build_reward("remote", options={"remote": {"url": server, "reward": "brightness"}})
    images = _images(2)
    out = reward(images, ["a", "b"], [{}, {}])
    assert torch.allclose(out["avg"], Brightness()(images, None, None)["brightness"].double(), atol=1e-7)


def test_unreachable_port_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RewardServerUnreachable, match=re.escape(url)):
        RemoteReward(url, max_retries=1, backoff_s=0.01, timeout_s=2).health()
