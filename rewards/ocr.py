"""OCR reward: how well the text the prompt asks for is rendered in the image.

Rule (the references', see the spec):

* target = the text between the first pair of double quotes of the prompt;
* recognised = the concatenation of the OCR lines whose confidence is > 0;
* spaces are removed and both are lower-cased;
* distance = 0 if the target is a substring of the recognised text, else the Levenshtein distance, capped at
  ``len(target)``; reward = ``1 - distance / len(target)`` (0..1);
* an OCR failure scores 0 (the reference's behaviour), a prompt without a quoted target raises ``ValueError``
  naming the prompt (the reference crashes there).

The references use PaddleOCR (PP-OCR English det + rec, no angle classifier). We use ``rapidocr-onnxruntime``, which
runs the PP-OCR det/rec models through ONNX Runtime on the CPU, ships its weights and works offline. The angle
classifier is off as in the reference, and the uint8 RGB array is handed over as it is (the reference passes the RGB
array to PaddleOCR, which reads arrays as BGR; RapidOCR reads arrays the same way).
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from rewards.base import to_uint8

Recogniser = Callable[[np.ndarray], list]  # uint8 [H, W, 3] -> [(text, confidence), ...]


def ocr_target(prompt: str) -> str:
    """The text between the first pair of double quotes; ``ValueError`` naming the prompt if none or empty."""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f'ocr reward: prompt has no text between double quotes ("..."): {prompt!r}')
    if not parts[1].replace(" ", ""):
        raise ValueError(f"ocr reward: prompt has an empty quoted target: {prompt!r}")
    return parts[1]


def ocr_score(target: str, lines: list) -> float:
    """``1 - min(dist, len) / len`` for the quoted ``target`` and recognised ``lines`` [(text, confidence), ...]."""
    from rapidfuzz.distance import Levenshtein

    target = target.replace(" ", "").lower()
    recognised = "".join(str(text) for text, confidence in lines if float(confidence) > 0)
    recognised = recognised.replace(" ", "").lower()
    if target in recognised:
        distance = 0
    else:
        distance = min(Levenshtein.distance(recognised, target), len(target))
    return 1.0 - distance / len(target)


class RapidOCRRecogniser:
    """RapidOCR (PP-OCR det + rec on ONNX Runtime) -> [(text, confidence), ...]. Built lazily, one per process."""

    def __init__(self, **engine_options):
        self.engine_options = engine_options
        self._engine = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._engine is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as e:
                    raise ImportError(
                        "the ocr reward needs rapidocr-onnxruntime: pip install rapidocr-onnxruntime==1.4.4"
                    ) from e
                self._engine = RapidOCR(**self.engine_options)
        return self._engine

    def __call__(self, image: np.ndarray) -> list:
        engine = self._load()
        result, _ = engine(image, use_cls=False)
        return [(line[1], line[2]) for line in (result or [])]


class OCRReward:
    """``ocr`` in 0..1 (see the module doc). Options: ``recogniser`` (a callable uint8 [H, W, 3] -> [(text, conf)],
    default RapidOCR) and ``on_error`` ("zero": an OCR failure scores 0 as in the reference; "raise")."""

    name = "ocr"

    def __init__(self, *, recogniser: Recogniser | None = None, on_error: str = "zero"):
        if on_error not in ("zero", "raise"):
            raise ValueError(f"ocr reward: on_error must be 'zero' or 'raise', got {on_error!r}")
        self.recogniser = recogniser if recogniser is not None else RapidOCRRecogniser()
        self.on_error = on_error

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        pixels = to_uint8(images).numpy()
        if len(prompts) != len(pixels):
            raise ValueError(f"ocr reward got {len(pixels)} images and {len(prompts)} prompts")
        targets = [ocr_target(p) for p in prompts]  # validate every prompt before any OCR runs
        scores, failed = [], []
        for array, target in zip(pixels, targets):
            try:
                lines = self.recogniser(np.ascontiguousarray(array))
            except Exception:  # noqa: BLE001 -- the reference scores an OCR failure 0
                if self.on_error == "raise":
                    raise
                scores.append(0.0)
                failed.append(1.0)
                continue
            scores.append(ocr_score(target, lines))
            failed.append(0.0)
        return {self.name: torch.tensor(scores, dtype=torch.float32), "ocr_failed": torch.tensor(failed)}
