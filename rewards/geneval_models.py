"""GenEval at paper scale, without mmdet: Mask2Former (Swin-S, COCO instance) and a CLIP ViT-L/14 colour classifier,
both through transformers; the scoring rules live in :mod:`rewards.geneval` (detector-free, shared with the shapes
world).

Detection follows mmdet's Mask2Former instance post-processing (what GenEval runs): class probabilities = softmax
over the 80 classes + "no object" (the last column dropped); the top ``max_per_image`` (100) (query, class) pairs
over all queries x classes; each pair's mask logits are upsampled (bilinear) to the padded network input, cropped to
the resized image and upsampled to the original size; mask = logits > 0; confidence = class probability x the mean
sigmoid inside the mask; box = the mask's extent ``[x_min, y_min, x_max + 1, y_max + 1]``. Pairs whose class
probability is <= 0.3 are dropped early (their confidence cannot pass GenEval's lowest threshold). The processor
resizes the shortest edge to 800 (longest <= 1333) like mmdet's test pipeline, unless ``detector_size`` says
otherwise.

Colour: the detections the rules look at (confident, top 16 per class) of every class an include asks a colour of
are masked over grey ``#999999``, cropped to their box (PIL rounds the box) and classified zero-shot by CLIP over the
10 GenEval colours, each colour's text embedding being the normalised mean of the normalised embeddings of
"a photo of a {c} {cls}", "a photo of a {c}-colored {cls}" and "a photo of a {c} object".

COCO names map to GenEval's (``mouse`` -> ``computer mouse``, ``remote`` -> ``tv remote``, ``keyboard`` ->
``computer keyboard``). ``jpeg_quality=75`` reproduces FlowGRPO, whose GenEval server scores JPEG round-tripped images.

Two differences from the references that we keep on purpose and document: the weights are the detectron2-trained
Mask2Former converted by Hugging Face, not mmdet's checkpoint; and GenEval hands mmdet an RGB array that mmdet reads as
BGR, so mmdet's detector sees the channels swapped -- ``detector_channel_order="bgr"`` reproduces that quirk, the
default "rgb" feeds the model as it was trained.
"""
from __future__ import annotations

import io
import threading

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rewards.base import check_images, to_uint8
from rewards.clip_rewards import CLIP_L14, ClipEmbedder, load_or_explain, resolve_device, resolve_dtype

DETECTOR = "facebook/mask2former-swin-small-coco-instance"
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object",
)
GREY = "#999999"
MIN_CONFIDENCE = 0.3  # GenEval's lowest threshold: nothing at or below it is ever counted
# COCO / detectron2 label names -> GenEval's object names (others are identical)
GENEVAL_NAMES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv",
    "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
}


def geneval_name(label: str) -> str:
    label = str(label).strip().lower().replace("_", " ")
    label = label.removesuffix("-merged").removesuffix("-other")
    return GENEVAL_NAMES.get(label, label)


# ---------------------------------------------------------------------------------------------------------------------
# detection post-processing (pure torch, testable on a stub model output)
# ---------------------------------------------------------------------------------------------------------------------
def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bool [N, H, W] -> float [N, 4] ``[x_min, y_min, x_max + 1, y_max + 1]`` (mmdet's mask2bbox); empty -> 0s."""
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return boxes
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
    for i in range(n):
        xs, ys = torch.nonzero(cols[i]).flatten(), torch.nonzero(rows[i]).flatten()
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def mask2former_instances(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    valid_hw: tuple[int, int],
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    max_per_image: int = 100,
    min_class_score: float = MIN_CONFIDENCE,
) -> dict[str, torch.Tensor]:
    """One image's Mask2Former outputs -> instances, as mmdet's ``MaskFormerFusionHead.instance_postprocess``.

    ``class_logits`` [Q, C + 1] (last = no object), ``mask_logits`` [Q, h, w] at the network's mask resolution;
    ``input_hw`` the padded network input, ``valid_hw`` its unpadded part, ``output_hw`` the original image size.
    Returns ``{"scores" [N], "labels" [N], "boxes" [N, 4], "masks" bool [N, H, W]}`` sorted by score.
    """
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    num_classes = probs.shape[1]
    k = min(int(max_per_image), probs.numel())
    top, index = probs.flatten().topk(k)
    keep = top > min_class_score
    top, index = top[keep], index[keep]
    labels, queries = index % num_classes, index // num_classes
    height, width = output_hw
    if len(top) == 0:
        empty = torch.zeros((0,), dtype=torch.float32)
        masks = torch.zeros((0, height, width), dtype=torch.bool)
        return {"scores": empty, "labels": labels.cpu(), "boxes": torch.zeros((0, 4)), "masks": masks}
    unique, inverse = torch.unique(queries, return_inverse=True)
    logits = mask_logits[unique].float()[None]
    logits = F.interpolate(logits, size=tuple(input_hw), mode="bilinear", align_corners=False)
    logits = logits[..., : valid_hw[0], : valid_hw[1]]
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
    binary = logits > 0
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * mask_scores[inverse]
    order = torch.argsort(scores, descending=True, stable=True)
    masks = binary[inverse][order]
    return {
        "scores": scores[order].cpu(),
        "labels": labels[order].cpu(),
        "boxes": masks_to_boxes(masks.cpu()),
        "masks": masks.cpu(),
    }


def color_crop(image: np.ndarray, box, mask: np.ndarray | None = None) -> Image.Image:
    """The object masked over grey #999999 (when a mask is given) and cropped to ``box`` (PIL rounds it)."""
    pil = Image.fromarray(image).convert("RGB")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (pil.height, pil.width):
            raise ValueError(f"mask of shape {mask.shape} for an image of {pil.height}x{pil.width}")
        pil = Image.composite(pil, Image.new("RGB", pil.size, GREY), Image.fromarray(mask))
    return pil.crop(tuple(float(v) for v in list(box)[:4]))


class ColorClassifier:
    """CLIP zero-shot over :data:`COLORS` with :data:`COLOR_TEMPLATES`; text classifiers cached per class name."""

    def __init__(self, clip: ClipEmbedder):
        self.clip = clip
        self._classifiers: dict[str, torch.Tensor] = {}

    def classifier(self, cls: str) -> torch.Tensor:
        if cls not in self._classifiers:
            rows = []
            for c in COLORS:
                emb = self.clip.embed_text([t.format(c=c, cls=cls) for t in COLOR_TEMPLATES])  # normalised rows
                rows.append(F.normalize(emb.mean(dim=0), dim=-1))
            self._classifiers[cls] = torch.stack(rows)
        return self._classifiers[cls]

    def __call__(self, crops: list, cls: str) -> list[str]:
        if not crops:
            return []
        image_emb = self.clip.embed_pil(crops)
        logits = image_emb @ self.classifier(cls).T
        return [COLORS[i] for i in logits.argmax(dim=1).tolist()]


def jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> each image saved as a PIL JPEG of ``quality`` and decoded again."""
    out = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(out)


class GenEvalReward:
    """``geneval`` = GenEval's partial-credit training score (can be negative); ``accuracy`` (official rule; left
    out when ``only_strict``), ``strict_accuracy``.

    Options: ``detector`` (folder or hub id, default ``facebook/mask2former-swin-small-coco-instance``),
    ``detector_processor`` (default: same as ``detector``), ``clip_model`` (default ``openai/clip-vit-large-patch14``),
    ``clip_processor``, ``only_strict`` (True: training mode, accuracy not computed), ``fixed_position`` (False: the
    reference's position quirk), ``jpeg_quality`` (None = off; 75 = FlowGRPO's JPEG round trip), ``detector_size``
    (processor size, default ``{"shortest_edge": 800, "longest_edge": 1333}``; None = the processor's own),
    ``detector_channel_order`` ("rgb" | "bgr"), ``max_per_image`` (100), ``device``, ``dtype``, ``batch_size``
    (images per detector forward, 8), ``clip_batch_size`` (32).
    """

    name = "geneval"

    def __init__(
        self,
        *,
        detector: str = DETECTOR,
        detector_processor: str | None = None,
        clip_model: str = CLIP_L14,
        clip_processor: str | None = None,
        only_strict: bool = True,
        fixed_position: bool = False,
        jpeg_quality: int | None = None,
        detector_size: dict | None = {"shortest_edge": 800, "longest_edge": 1333},  # noqa: B006 -- never mutated
        detector_channel_order: str = "rgb",
        max_per_image: int = 100,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        clip_batch_size: int = 32,
    ):
        if detector_channel_order not in ("rgb", "bgr"):
            raise ValueError(f"geneval: detector_channel_order must be 'rgb' or 'bgr', got {detector_channel_order!r}")
        if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"geneval: jpeg_quality must be None or 1..100, got {jpeg_quality}")
        self.detector_path = str(detector)
        self.detector_processor_path = str(detector_processor or detector)
        self.only_strict = bool(only_strict)
        self.fixed_position = bool(fixed_position)
        self.jpeg_quality = None if jpeg_quality is None else int(jpeg_quality)
        self.detector_size = dict(detector_size) if detector_size else None
        self.detector_channel_order = detector_channel_order
        self.max_per_image = int(max_per_image)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = int(batch_size)
        self.clip = ClipEmbedder(
            clip_model, clip_processor, device=self.device, dtype=self.dtype, batch_size=clip_batch_size,
            reward=self.name, model_option="clip_model", processor_option="clip_processor",
        )
        self.colors = ColorClassifier(self.clip)
        self._detector = None
        self._processor = None
        self._class_names: list[str] = []
        self._lock = threading.Lock()

    # -- models ----------------------------------------------------------------------------------------------------
    def _load_detector(self):
        with self._lock:
            if self._detector is None:
                from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

                processor = load_or_explain(
                    AutoImageProcessor.from_pretrained, self.detector_processor_path,
                    option="detector_processor" if self.detector_processor_path != self.detector_path else "detector",
                    reward=self.name, what="the Mask2Former image processor",
                )
                model = load_or_explain(
                    Mask2FormerForUniversalSegmentation.from_pretrained, self.detector_path,
                    option="detector", reward=self.name, what="the Mask2Former detector",
                )
                id2label = model.config.id2label
                self._class_names = [geneval_name(id2label[i]) for i in range(len(id2label))]
                self._processor = processor
                self._detector = model.eval().requires_grad_(False).to(self.device, dtype=self.dtype)
        return self._detector, self._processor

    @property
    def class_names(self) -> list[str]:
        self._load_detector()
        return list(self._class_names)

    @torch.no_grad()
    def detect(self, pixels: np.ndarray) -> list[list[dict]]:
        """uint8 [B, H, W, 3] -> per image, raw detections ``{"class", "box", "confidence", "color": None, "mask"}``
        (confidence > 0.3 only, most confident first)."""
        model, processor = self._load_detector()
        out: list[list[dict]] = []
        for start in range(0, len(pixels), max(self.batch_size, 1)):
            chunk = pixels[start : start + self.batch_size]
            if self.detector_channel_order == "bgr":
                chunk = chunk[..., ::-1]
            kwargs = {"size": self.detector_size} if self.detector_size else {}
            pil = [Image.fromarray(np.ascontiguousarray(a)) for a in chunk]
            inputs = processor(images=pil, return_tensors="pt", **kwargs)
            pixel_values = inputs["pixel_values"].to(self.device, dtype=self.dtype)
            pixel_mask = inputs.get("pixel_mask")
            if pixel_mask is None:
                pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
            outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask.to(self.device))
            input_hw = tuple(pixel_values.shape[-2:])
            for j, array in enumerate(chunk):
                valid = pixel_mask[j].bool()
                valid_hw = (int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum()))
                inst = mask2former_instances(
                    outputs.class_queries_logits[j], outputs.masks_queries_logits[j],
                    valid_hw=valid_hw, input_hw=input_hw, output_hw=tuple(array.shape[:2]),
                    max_per_image=self.max_per_image,
                )
                out.append([
                    {
                        "class": self._class_names[int(label)],
                        "box": [float(v) for v in box],
                        "confidence": float(score),
                        "color": None,
                        "mask": mask.numpy(),
                    }
                    for score, label, box, mask in zip(inst["scores"], inst["labels"], inst["boxes"], inst["masks"])
                ])
        return out

    def classify_colors(self, image: np.ndarray, detections: list[dict], metadata: dict) -> None:
        """Fill ``color`` of the detections GenEval's rules will look at, for classes an include asks a colour of."""
        from rewards.geneval import keep_confident

        wanted = {req["class"] for req in metadata.get("include", []) if "color" in req}
        if not wanted:
            return
        confident = keep_confident(detections, metadata["tag"])
        for cls in sorted(wanted):
            dets = confident.get(cls, [])
            crops = [color_crop(image, d["box"], d.get("mask")) for d in dets]
            for det, colour in zip(dets, self.colors(crops, cls)):
                det["color"] = colour

    # -- the reward ------------------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, prompts, metadata: list[dict]) -> dict[str, torch.Tensor]:
        from rewards.geneval import score_detections

        check_images(images)
        if len(metadata) != images.shape[0]:
            raise ValueError(f"geneval got {images.shape[0]} images and {len(metadata)} metadata")
        for i, meta in enumerate(metadata):
            if not isinstance(meta, dict) or "tag" not in meta or "include" not in meta:
                raise ValueError(f"geneval: metadata[{i}] is not a GenEval record with 'tag' and 'include': {meta!r}")
        pixels = to_uint8(images).numpy()
        if self.jpeg_quality is not None:
            pixels = jpeg_round_trip(pixels, self.jpeg_quality)
        detections = self.detect(pixels)
        rows = []
        for image, dets, meta in zip(pixels, detections, metadata):
            self.classify_colors(image, dets, meta)
            rows.append(score_detections(meta, dets, only_strict=self.only_strict, fixed_position=self.fixed_position))
        column = lambda key: torch.tensor([r[key] for r in rows], dtype=torch.float32)  # noqa: E731
        out = {self.name: column("score"), "strict_accuracy": column("strict_accuracy")}
        if not self.only_strict:  # training mode computes no official accuracy: leave the key out, not 0
            out["accuracy"] = column("accuracy")
        return out
