"""A reward server: host registry rewards in a separate process behind HTTP, with a safe wire format.

The references run GenEval (and DeQA) as HTTP services fed with pickles, which execute whatever the peer sends. Here
everything on the wire is JSON, and images are PNG (lossless: the hosted reward sees exactly the uint8 image the
in-process reward would) or, on request, JPEG (FlowGRPO scores GenEval on quality-75 JPEGs).

Start::

    python -m rewards.server --reward shapes_geneval,jpeg_compressibility --host 127.0.0.1 --port 18085 \\
        [--options '{"geneval": {"only_strict": true}}']

``--port 0`` picks a free port; the server prints ``rewards.server: serving [...] on http://HOST:PORT`` when ready.

Protocol (HTTP/1.0, JSON bodies, UTF-8):

* ``GET /health`` -> 200 ``{"status": "ok", "rewards": [hosted names], "pid": int}``
* ``POST /score`` with ``{"reward": spec, "images": [base64 PNG or JPEG bytes], "prompts": [str],
  "metadata": [object]}``. ``spec`` is a reward spec over the hosted names (``"geneval"``,
  ``"jpeg_compressibility:0.5,brightness:0.5"``; optional when one reward is hosted). All images must have the same
  size; ``prompts`` and ``metadata`` default to ``""`` / ``{}`` per image. Reply 200 ``{"reward": spec, "n": B,
  "scores": {key: [float] * B}}`` with every key of the weighted multi-reward (each component, its diagnostics and
  ``avg``).
* Errors reply ``{"error": message}``: 400 malformed JSON / fields / images, 404 unknown path or reward, 405 wrong
  method, 411 / 413 missing or too large body; 500 when the reward itself raised (the message carries its error).

The hosted images are rebuilt as ``uint8 / 255`` float tensors: rewards that work on the uint8 image (all but
clipscore / hpsv2 / brightness) score exactly as in-process; float-input rewards see the uint8-quantised image.

:class:`RemoteReward` is the client (name ``remote``): it sends batches in chunks of ``batch_size``, retries a chunk
with exponential backoff on connection errors, timeouts and HTTP 5xx, and raises (never scores 0) when a chunk
cannot be scored: a batch is either fully scored or raises. It returns every key of the server's reply plus
``remote`` = the hosted ``avg``.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import io
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from PIL import Image

from rewards.base import MultiReward, to_uint8

DEFAULT_PORT = 18085
MAX_REQUEST_BYTES = 512 * 1024 * 1024


class RemoteRewardError(RuntimeError):
    """The reward server could not score a batch; the message names the URL."""


class RewardServerUnreachable(RemoteRewardError, ConnectionError):
    """The reward server did not answer (refused, reset, timed out) within the retries."""


class ClientError(ValueError):
    """A malformed request: answered with a 4xx status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------------------------
# images on the wire
# ---------------------------------------------------------------------------------------------------------------------
def encode_images(images: torch.Tensor, image_format: str = "png", jpeg_quality: int = 75) -> list[str]:
    """Float [B, 3, H, W] in [0, 1] -> base64 PNG (lossless) or JPEG strings of the references' uint8 image."""
    fmt = image_format.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    out = []
    for array in to_uint8(images).numpy():
        buffer = io.BytesIO()
        if fmt == "png":
            Image.fromarray(array).save(buffer, format="PNG")
        else:
            Image.fromarray(array).save(buffer, format="JPEG", quality=int(jpeg_quality))
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def decode_images(encoded: list) -> torch.Tensor:
    """base64 PNG / JPEG strings -> float [B, 3, H, W] = uint8 / 255; :class:`ClientError` (400) if malformed."""
    arrays = []
    for i, item in enumerate(encoded):
        if not isinstance(item, str):
            raise ClientError(400, f"images[{i}] must be a base64 string, got {type(item).__name__}")
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ClientError(400, f"images[{i}] is not valid base64: {e}") from None
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise ClientError(400, f"images[{i}] is {image.format}, not PNG or JPEG")
                arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except ClientError:
            raise
        except Exception as e:  # noqa: BLE001 -- PIL raises many types for broken files
            raise ClientError(400, f"images[{i}] is not a readable PNG/JPEG image: {type(e).__name__}: {e}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ClientError(400, f"all images of a request must have one size, got {sorted(shapes)}")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return batch.to(torch.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------------------------------
class _Serialised:
    """A hosted reward behind a lock: models on one device are not called from two request threads at once."""

    def __init__(self, reward):
        self.reward = reward
        self.name = getattr(reward, "name", type(reward).__name__)
        self.lock = threading.Lock()

    def __call__(self, images, prompts, metadata):
        with self.lock:
            return self.reward(images, prompts, metadata)


class RewardService:
    """The request logic, independent of HTTP: ``score(body) -> reply`` raising :class:`ClientError` or the reward's
    exception."""

    def __init__(self, rewards: dict):
        if not rewards:
            raise ValueError("the reward server needs at least one reward")
        self.rewards = {name: _Serialised(fn) for name, fn in rewards.items()}

    def weights(self, spec) -> dict[str, float]:
        if spec is None or spec == "":
            if len(self.rewards) != 1:
                raise ClientError(400, f"field 'reward' is required: this server hosts {sorted(self.rewards)}")
            return {next(iter(self.rewards)): 1.0}
        if not isinstance(spec, (str, dict)):
            raise ClientError(400, f"field 'reward' must be a string such as 'a' or 'a:0.5,b:0.5', got {spec!r}")
        weights: dict[str, float] = {}
        items = spec.items() if isinstance(spec, dict) else (p.partition(":")[::2] for p in spec.split(","))
        for name, w in items:
            name = str(name).strip()
            if not name:
                continue
            try:
                weights[name] = float(w) if str(w).strip() else 1.0
            except ValueError:
                raise ClientError(400, f"reward spec {spec!r}: weight {w!r} of '{name}' is not a number") from None
            if name not in self.rewards:
                raise ClientError(404, f"reward '{name}' is not hosted here; this server hosts {sorted(self.rewards)}")
        if not weights:
            raise ClientError(400, f"reward spec {spec!r} names no reward")
        return weights

    def score(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ClientError(400, "the request body must be a JSON object")
        unknown = set(body) - {"reward", "images", "prompts", "metadata", "image_format"}
        if unknown:
            raise ClientError(400, f"unknown fields {sorted(unknown)}")
        weights = self.weights(body.get("reward"))
        images = body.get("images")
        if not isinstance(images, list) or not images:
            raise ClientError(400, "field 'images' must be a non-empty list of base64 PNG/JPEG strings")
        n = len(images)
        prompts = body.get("prompts", [""] * n)
        metadata = body.get("metadata", [{}] * n)
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ClientError(400, "field 'prompts' must be a list of strings")
        if not isinstance(metadata, list):
            raise ClientError(400, "field 'metadata' must be a list (one JSON value per image)")
        if not (len(prompts) == len(metadata) == n):
            raise ClientError(400, f"got {n} images, {len(prompts)} prompts and {len(metadata)} metadata")
        batch = decode_images(images)
        reward = MultiReward(components={k: self.rewards[k] for k in weights}, weights=weights)
        out = reward(batch, prompts, metadata)  # a failing reward raises RewardError naming it -> 500
        spec = ",".join(f"{k}:{w:g}" for k, w in weights.items())
        scores = {k: [float(x) for x in v.reshape(-1).tolist()] for k, v in out.items()}
        return {"reward": spec, "n": n, "scores": scores}


class _Handler(BaseHTTPRequestHandler):
    server_version = "flowrl-reward-server/1"
    service: RewardService
    max_request_bytes: int = MAX_REQUEST_BYTES
    verbose: bool = False

    def log_message(self, format, *args):  # noqa: A002 -- the stdlib's signature
        if self.verbose:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.rstrip("/") in ("/health", ""):
            self._reply(200, {"status": "ok", "rewards": sorted(self.service.rewards), "pid": os.getpid()})
        else:
            self._reply(404, {"error": f"no such path {self.path!r}; use GET /health or POST /score"})

    def do_POST(self):  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"no such path {self.path!r}; POST /score"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "a Content-Length header is required"})
            return
        if length < 0 or length > self.max_request_bytes:
            self._reply(413, {"error": f"request body of {length} bytes exceeds {self.max_request_bytes} bytes"})
            return
        raw = self.rfile.read(length)
        try:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ClientError(400, f"the request body is not JSON: {e}") from None
            reply = self.service.score(body)
        except ClientError as e:
            self._reply(e.status, {"error": str(e)})
            return
        except Exception as e:  # noqa: BLE001 -- the reward's own failure: 500 with its text
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})
            return
        self._reply(200, reply)

    def do_PUT(self):  # noqa: N802
        self._reply(405, {"error": "use GET /health or POST /score"})

    do_DELETE = do_PATCH = do_PUT


def make_server(rewards: dict, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                max_request_bytes: int = MAX_REQUEST_BYTES, verbose: bool = False) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer hosting ``rewards`` (name -> callable); call ``serve_forever()`` on it."""
    handler = type(
        "RewardHandler", (_Handler,),
        {"service": RewardService(rewards), "max_request_bytes": int(max_request_bytes), "verbose": verbose},
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def build_hosted(names: list[str], options: dict | None = None) -> dict:
    """Instantiate registry rewards by name with ``options[name]`` keyword arguments."""
    from rewards import REGISTRY, load_reward_class

    options = options or {}
    hosted = {}
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown reward '{name}'; choose from {sorted(REGISTRY)}")
        if name == "remote":
            raise ValueError("the reward server cannot host 'remote' (a client of another server)")
        hosted[name] = load_reward_class(name)(**options.get(name, {}))
    return hosted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rewards.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", required=True, help="comma-separated registry names, e.g. geneval,ocr")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--options", default="{}", help="JSON {name: {option: value}}, or @file.json")
    parser.add_argument("--max-request-mb", type=float, default=MAX_REQUEST_BYTES / 2**20)
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    text = args.options
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    options = json.loads(text)
    names = [n.strip() for n in args.reward.split(",") if n.strip()]
    server = make_server(build_hosted(names, options), args.host, args.port,
                         max_request_bytes=int(args.max_request_mb * 2**20), verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"rewards.server: serving {names} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------------------------------
def _json_safe(value):
    """Metadata -> JSON-able (numpy scalars / arrays and tuples converted); TypeError naming what is not."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray) or isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} cannot be sent as JSON")


class RemoteReward:
    """Client of :mod:`rewards.server` (registry name ``remote``).

    Options: ``url`` (``http://127.0.0.1:18085``), ``reward`` (spec over the server's hosted names; None when it
    hosts one), ``timeout_s`` per request (120), ``max_retries`` (3, i.e. up to 4 attempts per chunk), ``backoff_s``
    (first retry delay, doubled each retry, 1.0), ``batch_size`` (64 images per request), ``image_format`` ("png" |
    "jpeg"), ``jpeg_quality`` (75, PIL's default, as FlowGRPO's GenEval client).
    """

    name = "remote"

    def __init__(
        self,
        url: str = f"http://127.0.0.1:{DEFAULT_PORT}",
        reward: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        batch_size: int = 64,
        image_format: str = "png",
        jpeg_quality: int = 75,
    ):
        if batch_size < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("remote reward: need batch_size >= 1, max_retries >= 0 and timeout_s > 0")
        if image_format.lower() not in ("png", "jpeg", "jpg"):
            raise ValueError(f"remote reward: image_format must be 'png' or 'jpeg', got {image_format!r}")
        self.url = url.rstrip("/")
        self.reward = reward
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.batch_size = int(batch_size)
        self.image_format = image_format.lower()
        self.jpeg_quality = int(jpeg_quality)

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One HTTP exchange with retries; returns the JSON reply of a 200."""
        url = self.url + path
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 60.0))
            request = urllib.request.Request(url, data=data, method=method)
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read()
                try:
                    return json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    last = f"a reply that is not JSON: {body[:200]!r}"
                    server_failed = True
                    continue
            except urllib.error.HTTPError as e:
                message = _error_text(e)
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    raise RemoteRewardError(
                        f"reward server {url} rejected the request: HTTP {e.code}: {message}"
                    ) from None
                last = f"HTTP {e.code}: {message}"
                server_failed = True
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
                    ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
                server_failed = False
        if server_failed:
            raise RemoteRewardError(f"reward server {url} failed {self.max_retries + 1} attempts; last: {last}")
        raise RewardServerUnreachable(
            f"reward server {url} is unreachable after {self.max_retries + 1} attempts (last: {last}); "
            f"is `python -m rewards.server` running there?"
        )

    def health(self) -> dict:
        return self._request("GET", "/health")

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list) -> dict[str, torch.Tensor]:
        n = images.shape[0]
        if not (len(prompts) == len(metadata) == n):
            raise ValueError(f"remote reward got {n} images, {len(prompts)} prompts and {len(metadata)} metadata")
        if n == 0:
            raise ValueError("remote reward got an empty batch")
        metadata = [_json_safe(m) for m in metadata]
        columns: dict[str, list[float]] = {}
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            payload = {
                "images": encode_images(images[start:stop], self.image_format, self.jpeg_quality),
                "prompts": [str(p) for p in prompts[start:stop]],
                "metadata": metadata[start:stop],
            }
            if self.reward:
                payload["reward"] = self.reward
            reply = self._request("POST", "/score", payload)
            scores = reply.get("scores") if isinstance(reply, dict) else None
            if not isinstance(scores, dict) or "avg" not in scores:
                raise RemoteRewardError(f"reward server {self.url} sent a reply without scores/avg: {str(reply)[:300]}")
            if start and set(scores) != set(columns):
                raise RemoteRewardError(f"reward server {self.url} changed its keys between chunks")
            for key, values in scores.items():
                if not isinstance(values, list) or len(values) != stop - start:
                    got = len(values) if isinstance(values, list) else "?"
                    raise RemoteRewardError(
                        f"reward server {self.url} returned {key!r} for {got} images instead of {stop - start}"
                    )
                columns.setdefault(key, []).extend(float(v) if v is not None else math.nan for v in values)
        out = {key: torch.tensor(values, dtype=torch.float64) for key, values in columns.items()}
        out[self.name] = out["avg"].clone()
        return out


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return str(error)
    try:
        return str(json.loads(body).get("error", body))[:2000]
    except (ValueError, AttributeError):
        return body[:2000]


if __name__ == "__main__":
    main(sys.argv[1:])
