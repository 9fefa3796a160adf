"""GenEval's scoring rules, separated from any detector (pure python + numpy).

A detector (the paper-scale Mask2Former + CLIP colour classifier, or the shapes world's classical one) turns an
image into raw detections ``{"class", "box": [x1, y1, x2, y2], "confidence", "color"}``; :func:`score_detections`
applies GenEval's rules to them and to one prompt's metadata (GenEval's ``test_metadata.jsonl`` format:
``{"tag", "include": [{"class", "count", "color"?, "position"?: [relation, index]}], "exclude"?, "prompt"}``).
Keeping the rules here, detector-free, means the shapes world and the paper-scale reward score exactly alike, and
the rules can be tested with hand-made detections.

Three outputs per image, as in the FlowGRPO reward server:

* ``accuracy`` -- the official GenEval rule (what papers report): each include takes its ``count`` most confident
  detections; excludes forbid ``count`` or more detections of a class.
* ``strict_accuracy`` -- exact counts, colours and positions; excludes ignored.
* ``score`` -- the partial-credit training reward (can be negative), including the reference's position quirk.

:func:`evaluation_report` aggregates per-image rows into per-tag means and both overall numbers: the official mean
over the six tags, and the per-image mean that the references' in-training evaluators log.
"""
from __future__ import annotations

import numpy as np

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9  # the counting tag only counts very confident detections
MAX_OBJECTS_PER_CLASS = 16
POSITION_SHRINK = 0.1  # offsets shrink by this fraction of the summed box sizes before a relation is read

Detection = dict  # {"class": str, "box": [x1, y1, x2, y2], "confidence": float, "color": str, "mask"?: array}


def keep_confident(detections: list[Detection], tag: str) -> dict[str, list[Detection]]:
    """Group detections by class, keeping those above the tag's threshold, most confident first, 16 per class.

    The reference thresholds a float32 array against a Python float, which NumPy compares in float32: a confidence
    of exactly float32(0.3) is *not* above 0.3 and is dropped. We compare in float32 to match. No NMS (the
    reference's NMS threshold is 1, i.e. off). Ties in confidence keep the input order (the reference's order for
    ties depends on numpy's argsort; ties do not occur with real detector scores).
    """
    threshold = np.float32(COUNTING_THRESHOLD if tag == "counting" else THRESHOLD)
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        if np.float32(det["confidence"]) > threshold:
            by_class.setdefault(det["class"], []).append(det)
    return {
        cls: sorted(dets, key=lambda d: -float(d["confidence"]))[:MAX_OBJECTS_PER_CLASS]
        for cls, dets in by_class.items()
    }


def relative_position(box_a, box_b) -> set[str]:
    """Relations of object A relative to object B, from boxes ``[x1, y1, x2, y2]`` (image y grows downwards).

    The centre offset A - B shrinks, per axis, by 0.1 x the sum of the two boxes' sizes (not below 0) so that
    nearly aligned objects are not called left/right/above/below. If both shrunk components are below 1e-3 there is
    no relation. Otherwise the shrunk offset is divided by the norm of the *original* offset, and each axis is read
    with a 0.5 threshold: a diagonal placement can hold two relations at once (e.g. left of and above).
    Computed in float64 (the reference's float32 boxes can differ only at exact ties).
    """
    a = np.asarray(box_a[:4], dtype=np.float64)
    b = np.asarray(box_b[:4], dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    margin = POSITION_SHRINK * (np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2]))
    shrunk = np.maximum(np.abs(offset) - margin, 0.0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _holds(relation: str, objects: list[Detection], targets: list[Detection]) -> bool:
    """True when every object holds ``relation`` against every target."""
    return all(relation in relative_position(o["box"], t["box"]) for o in objects for t in targets)


def _target(groups: list, req: dict) -> list[Detection] | None:
    """The matched objects of the include that ``req['position']`` refers to (None if that include failed)."""
    index = req["position"][1]
    if not 0 <= index < len(groups):
        # The reference would crash with an IndexError; a relation may only point at an earlier include.
        raise ValueError(f"include {req} refers to include {index}, which is not an earlier include")
    return groups[index]


def official_accuracy(metadata: dict, objects: dict[str, list[Detection]]) -> bool:
    """GenEval's official rule on confident detections grouped by class (see :func:`keep_confident`)."""
    correct = True
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        found = objects.get(req["class"], [])[: req["count"]]
        ok = len(found) >= req["count"]
        if ok and "color" in req:
            ok = sum(d.get("color") == req["color"] for d in found) >= req["count"]
        if ok and "position" in req:
            targets = _target(groups, req)
            ok = targets is not None and _holds(req["position"][0], found, targets)
        groups.append(found if ok else None)
        correct = correct and ok
    for req in metadata.get("exclude", []):
        if len(objects.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def strict_and_score(
    metadata: dict, objects: dict[str, list[Detection]], fixed_position: bool = False
) -> tuple[bool, float]:
    """Strict correctness and the partial-credit training score (FlowGRPO's reward rule).

    Terms, per include (``n`` = every confident detection of the class, not just the top ``count``):

    * ``1 - |count - n| / count`` -- negative when n > 2 x count;
    * count wrong and the include asks for colour or position: one 0 (colour/position not looked at);
    * count right and colour asked: ``1 - |count - n_colour| / count``;
    * position asked and colour passed: target include failed -> 0; otherwise the reference appends 0 at the first
      failing pair *and then 1.0 unconditionally* (so a wrong position still earns half credit on that item).
      ``fixed_position=True`` appends only 1.0 when every pair holds, else only 0.

    Excludes are ignored (exact counts already exclude extras). Score is the mean of the terms, 0 if none.
    """
    strict = True
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        count = req["count"]
        found = objects.get(req["class"], [])
        terms.append(1 - abs(count - len(found)) / count)
        ok = len(found) == count
        if not ok:
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                n_colour = sum(d.get("color") == req["color"] for d in found)
                terms.append(1 - abs(count - n_colour) / count)
                ok = n_colour == count
            if "position" in req and ok:
                targets = _target(groups, req)
                if targets is None:
                    ok = False
                    terms.append(0.0)
                else:
                    ok = _holds(req["position"][0], found, targets)
                    if fixed_position:
                        terms.append(1.0 if ok else 0.0)
                    else:
                        if not ok:
                            terms.append(0.0)
                        terms.append(1.0)  # the reference's quirk: appended whether or not the pairs held
        groups.append(found if ok else None)
        strict = strict and ok
    return strict, (sum(terms) / len(terms) if terms else 0.0)


def score_detections(
    metadata: dict, detections: list[Detection], only_strict: bool = False, fixed_position: bool = False
) -> dict[str, float]:
    """Score one image's raw (pre-threshold) detections against its prompt metadata.

    Returns ``{"accuracy", "strict_accuracy", "score"}`` as floats. ``only_strict=True`` is the training mode of the
    reference server: the official accuracy is not computed and reported as 0.
    """
    objects = keep_confident(detections, metadata["tag"])
    strict, score = strict_and_score(metadata, objects, fixed_position=fixed_position)
    accuracy = False if only_strict else official_accuracy(metadata, objects)
    return {"accuracy": float(accuracy), "strict_accuracy": float(strict), "score": float(score)}


METRICS: tuple[str, ...] = ("accuracy", "strict_accuracy", "score")


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def evaluation_report(rows: list[dict]) -> dict:
    """Aggregate per-image rows ``{"tag", "accuracy", "strict_accuracy", "score"}``.

    Returns ``{"per_tag": {tag: {"n_images", metric...}}, "geneval_overall_tag_mean": {metric...},
    "per_image_mean": {metric...}, "n_images", "missing_tags"}``. The official GenEval overall is the mean of the
    per-tag means (each tag weighs the same, whatever its number of images); the per-image mean weighs tags by their
    number of images, as the references' in-training evaluators do. When a tag has no rows the tag mean is taken
    over the tags present and the missing ones are listed.
    """
    tags = [t for t in TAGS if any(r["tag"] == t for r in rows)]
    tags += sorted({r["tag"] for r in rows} - set(TAGS))
    per_tag = {}
    for tag in tags:
        tag_rows = [r for r in rows if r["tag"] == tag]
        per_tag[tag] = {"n_images": len(tag_rows), **{m: _mean([float(r[m]) for r in tag_rows]) for m in METRICS}}
    return {
        "per_tag": per_tag,
        "geneval_overall_tag_mean": {m: _mean([per_tag[t][m] for t in tags]) for m in METRICS},
        "per_image_mean": {m: _mean([float(r[m]) for r in rows]) for m in METRICS},
        "n_images": len(rows),
        "missing_tags": [t for t in TAGS if t not in per_tag],
    }


def format_report(report: dict) -> str:
    """A small fixed-width table of :func:`evaluation_report`'s output."""
    header = f"{'tag':<34}{'images':>7}{'accuracy':>10}{'strict':>9}{'score':>9}"
    lines = [header, "-" * len(header)]

    def row(name: str, n: int, values: dict) -> str:
        return f"{name:<34}{n:>7}{values['accuracy']:>10.4f}{values['strict_accuracy']:>9.4f}{values['score']:>9.4f}"

    for tag, values in report["per_tag"].items():
        lines.append(row(tag, values["n_images"], values))
    lines.append("-" * len(header))
    n = report["n_images"]
    lines.append(row("overall: mean of tags (official)", n, report["geneval_overall_tag_mean"]))
    lines.append(row("overall: mean of images", n, report["per_image_mean"]))
    if report["missing_tags"]:
        lines.append(f"missing tags (not in the tag mean): {', '.join(report['missing_tags'])}")
    return "\n".join(lines)
