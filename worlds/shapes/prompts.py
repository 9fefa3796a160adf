"""Shapes-world prompts in GenEval's metadata format, scenes that satisfy them, and the shipped prompt files.

Every prompt is lowercase words separated by single spaces (no punctuation), worded like GenEval's:
``a photo of a circle`` (single_object), ``a photo of a circle and a square`` (two_object), ``a photo of three
triangles`` (counting: 2-4 as in GenEval, with an exclude of count + 1), ``a photo of an orange square`` (colors),
``a photo of a triangle left of a circle`` (position; the include holding the relation comes second and refers to
include 0), ``a photo of a red circle and a blue square`` (color_attr: two different shapes, two different colours).

The world is small: 3 shapes and 6 colours allow only 240 distinct prompts (3 single_object, 6 two_object,
9 counting, 18 colors, 24 position, 180 color_attr), so GenEval's 553 *distinct* test prompts cannot exist here.
The shipped files therefore keep GenEval's tag proportions by repeating prompts (balanced: within a tag, counts
differ by at most one) and hold out prompts only where a tag is big enough: a third of the colors, position and
color_attr prompts (stratified by shape / relation / shape pair) are test-only; the 18 single_object, two_object
and counting prompts are in both files (holding any out would leave a tag with almost nothing to train or test).

What the test metric therefore measures (``python -m worlds.shapes.prompts --overlap`` prints it from the files):
every test line of single_object, two_object and counting has a prompt that is also a training prompt
(**in-distribution** tags), and no test line of colors, position or color_attr does (**held-out** tags). The 6-tag
mean mixes the two; reports show it beside the mean of the three held-out tags (:data:`HELD_OUT_TAGS`).

``python -m worlds.shapes.prompts --write`` regenerates ``data/train_metadata.jsonl`` and ``data/test_metadata.jsonl``
exactly (seeded); without ``--write`` it checks that the shipped files are up to date.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from rewards.geneval import RELATIONS, TAGS, relative_position
from worlds.shapes.scene import COLORS, SHAPES, Scene, SceneObject, place_objects

COUNTS: tuple[int, ...] = (2, 3, 4)
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
VOCAB: list[str] = (
    ["a", "an", "photo", "of", "and", "left", "right", "above", "below"]
    + [NUMBER_WORDS[n] for n in COUNTS]
    + list(COLORS)
    + list(SHAPES)
    + [shape + "s" for shape in SHAPES]
)

# Lines per tag in the shipped files: GenEval's test proportions (80/99/80/94/100/100 = 553), train 5x that.
TEST_LINES_PER_TAG: dict[str, int] = {
    "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100,
}
TRAIN_LINES_PER_TAG: dict[str, int] = {tag: 5 * n for tag, n in TEST_LINES_PER_TAG.items()}
# Test-only prompts per group (group: shape for colors, relation for position, ordered shape pair for color_attr).
HELD_OUT_PER_GROUP: dict[str, int] = {"colors": 2, "position": 2, "color_attr": 10}
# Tags whose test prompts never occur in training (and the others, whose test prompts all do); checked against the
# shipped files by tests/test_shapes_world.py through overlap_by_tag().
HELD_OUT_TAGS: tuple[str, ...] = ("colors", "position", "color_attr")
IN_DISTRIBUTION_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting")
FILES_SEED = 0
DATA_DIR = Path(__file__).parent / "data"
TRAIN_FILE = DATA_DIR / "train_metadata.jsonl"
TEST_FILE = DATA_DIR / "test_metadata.jsonl"


def tokenize_words(prompt: str) -> list[str]:
    """The words of a prompt (prompts are words separated by single spaces)."""
    return prompt.split()


def noun_phrase(shape: str, count: int = 1, color: str | None = None) -> str:
    """``a circle``, ``an orange square``, ``three red triangles``."""
    words = ([color] if color else []) + [shape if count == 1 else shape + "s"]
    if count == 1:
        return " ".join(["an" if words[0][0] in "aeiou" else "a"] + words)
    return " ".join([NUMBER_WORDS[count]] + words)


def _meta(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    """A metadata dict with GenEval's key order."""
    meta: dict = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    meta["prompt"] = prompt
    return meta


def prompt_pool(tag: str) -> list[dict]:
    """Every distinct prompt (metadata) of ``tag``, in a fixed order."""
    pairs = list(itertools.permutations(SHAPES, 2))
    if tag == "single_object":
        return [_meta(tag, [{"class": s, "count": 1}], f"a photo of {noun_phrase(s)}") for s in SHAPES]
    if tag == "two_object":
        return [
            _meta(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}],
                  f"a photo of {noun_phrase(a)} and {noun_phrase(b)}")
            for a, b in pairs
        ]
    if tag == "counting":
        return [
            _meta(tag, [{"class": s, "count": n}], f"a photo of {noun_phrase(s, n)}", [{"class": s, "count": n + 1}])
            for s in SHAPES for n in COUNTS
        ]
    if tag == "colors":
        return [
            _meta(tag, [{"class": s, "count": 1, "color": c}], f"a photo of {noun_phrase(s, 1, c)}")
            for s in SHAPES for c in COLORS
        ]
    if tag == "position":
        return [
            _meta(tag, [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}],
                  f"a photo of {noun_phrase(b)} {rel} {noun_phrase(a)}")
            for a, b in pairs for rel in RELATIONS
        ]
    if tag == "color_attr":
        return [
            _meta(tag, [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                  f"a photo of {noun_phrase(a, 1, ca)} and {noun_phrase(b, 1, cb)}")
            for a, b in pairs for ca, cb in itertools.permutations(COLORS, 2)
        ]
    raise ValueError(f"unknown tag {tag!r}; tags are {TAGS}")


def _group(meta: dict) -> tuple:
    """The stratum a prompt is held out within (so every shape / relation / shape pair keeps train prompts)."""
    include = meta["include"]
    if meta["tag"] == "position":
        return (include[1]["position"][0],)
    return tuple(req["class"] for req in include)


def split_pools(seed: int = FILES_SEED) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """``(train_pool, test_pool)`` per tag: ``HELD_OUT_PER_GROUP`` prompts per stratum are test-only; tags not in
    it are shared by both pools (see the module docstring for why)."""
    rng = np.random.default_rng(seed)
    train: dict[str, list[dict]] = {}
    test: dict[str, list[dict]] = {}
    for tag in TAGS:
        pool = prompt_pool(tag)
        if tag not in HELD_OUT_PER_GROUP:
            train[tag], test[tag] = pool, pool
            continue
        held_out: set[str] = set()
        for key in sorted({_group(m) for m in pool}):
            members = [m["prompt"] for m in pool if _group(m) == key]
            held_out.update(rng.choice(members, size=HELD_OUT_PER_GROUP[tag], replace=False).tolist())
        train[tag] = [m for m in pool if m["prompt"] not in held_out]
        test[tag] = [m for m in pool if m["prompt"] in held_out]
    return train, test


def generate_metadata(n_prompts_per_tag: dict[str, int], seed: int, exclude_prompts=()) -> list[dict]:
    """``n`` distinct random prompts per tag (tags in GenEval order), none of them in ``exclude_prompts``.

    Raises ``ValueError`` if a tag has fewer distinct prompts than asked for (see the pool sizes in the module
    docstring).
    """
    unknown = set(n_prompts_per_tag) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}; tags are {TAGS}")
    excluded = set(exclude_prompts)
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for tag in TAGS:
        n = n_prompts_per_tag.get(tag, 0)
        pool = [m for m in prompt_pool(tag) if m["prompt"] not in excluded]
        if n > len(pool):
            raise ValueError(f"tag {tag!r} has only {len(pool)} distinct prompts available, {n} asked for")
        out += [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    return out


def _repeat_to(pool: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` lines cycling through a shuffled ``pool``: every prompt appears ``n // len(pool)`` or one more times."""
    order = rng.permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]


def build_files(seed: int = FILES_SEED) -> tuple[list[dict], list[dict]]:
    """The contents of the shipped ``(train, test)`` files: one metadata line each, grouped by tag."""
    train_pool, test_pool = split_pools(seed)
    rng = np.random.default_rng(seed + 1)
    test = [m for tag in TAGS for m in _repeat_to(test_pool[tag], TEST_LINES_PER_TAG[tag], rng)]
    train = [m for tag in TAGS for m in _repeat_to(train_pool[tag], TRAIN_LINES_PER_TAG[tag], rng)]
    return train, test


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def load_metadata(path: str | Path) -> list[dict]:
    """Read a metadata ``.jsonl`` file (one JSON object per non-empty line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def scene_for(metadata: dict, rng: np.random.Generator) -> Scene:
    """A random scene that satisfies ``metadata`` under GenEval's rules, exactly.

    Each include contributes exactly ``count`` objects of its class (never extra objects, so exact counts and
    excludes hold), in its colour when one is given, else each in a random colour. Position relations must hold
    (under :func:`rewards.geneval.relative_position`) between every object of the include and every object of the
    include it refers to; layouts that break them are resampled.
    """
    items: list[tuple[str, str]] = []
    owner: list[int] = []  # include index of each object
    for i, req in enumerate(metadata["include"]):
        for _ in range(req["count"]):
            items.append((req["class"], req.get("color") or str(rng.choice(COLORS))))
            owner.append(i)

    def relations_hold(objects: list[SceneObject]) -> bool:
        for i, req in enumerate(metadata["include"]):
            if "position" not in req:
                continue
            relation, target = req["position"]
            for obj, o in zip(objects, owner):
                for ref, r in zip(objects, owner):
                    if o == i and r == target and relation not in relative_position(obj.box, ref.box):
                        return False
        return True

    return place_objects(items, rng, accept=relations_hold)


def random_caption_scene(rng: np.random.Generator) -> tuple[Scene, str]:
    """A random scene of 1-4 shapes and a true caption that mentions every object (for pretraining variety).

    Captions come in three styles: with colours (``a photo of two red circles and a blue square``), without
    (``a photo of two circles and a square``), and, for two different shapes, a position phrase that holds
    (``a photo of a red circle above a square``). Groups appear in random order.
    """
    n = int(rng.integers(1, 5))
    items = [(str(rng.choice(SHAPES)), str(rng.choice(COLORS))) for _ in range(n)]
    style = str(rng.choice(["color", "plain", "position"]))
    if style == "position" and n == 2 and items[0][0] != items[1][0]:
        scene = place_objects(items, rng, accept=lambda objs: bool(relative_position(objs[0].box, objs[1].box)))
        a, b = scene.objects
        relation = str(rng.choice(sorted(relative_position(a.box, b.box))))
        with_colors = bool(rng.integers(2))
        phrase_a = noun_phrase(a.shape, 1, a.color if with_colors else None)
        phrase_b = noun_phrase(b.shape, 1, b.color if with_colors else None)
        return scene, f"a photo of {phrase_a} {relation} {phrase_b}"
    scene = place_objects(items, rng)
    groups: dict[tuple[str, str | None], int] = {}
    for shape, color in items:
        key = (shape, color if style == "color" else None)
        groups[key] = groups.get(key, 0) + 1
    keys = list(groups)
    phrases = [noun_phrase(keys[i][0], groups[keys[i]], keys[i][1]) for i in rng.permutation(len(keys))]
    return scene, "a photo of " + " and ".join(phrases)


def overlap_by_tag(train: list[dict], test: list[dict]) -> dict[str, dict[str, int]]:
    """Per GenEval tag of ``test``: test lines, those whose prompt is also a training prompt, and the same for
    distinct prompts (``lines``, ``lines_in_train``, ``prompts``, ``prompts_in_train``)."""
    seen = {row["prompt"] for row in train}
    out: dict[str, dict[str, int]] = {}
    for tag in dict.fromkeys(row["tag"] for row in test):
        rows = [row["prompt"] for row in test if row["tag"] == tag]
        distinct = set(rows)
        out[tag] = {"lines": len(rows), "lines_in_train": sum(p in seen for p in rows),
                    "prompts": len(distinct), "prompts_in_train": len(distinct & seen)}
    return out


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def overlap_markdown(train_file: Path = TRAIN_FILE, test_file: Path = TEST_FILE) -> str:
    """The overlap table of the shipped (or given) files as markdown."""
    lines = ["| tag | test lines | of which prompt also in training | distinct test prompts | of which in training |",
             "|---|---|---|---|---|"]
    for tag, n in overlap_by_tag(_read_jsonl(train_file), _read_jsonl(test_file)).items():
        lines.append(f"| {tag} | {n['lines']} | {n['lines_in_train']} | {n['prompts']} | {n['prompts_in_train']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate the shipped prompt files")
    parser.add_argument("--overlap", action="store_true",
                        help="print, per tag, how many test prompts also occur in the training file")
    args = parser.parse_args(argv)
    if args.overlap:
        print(overlap_markdown())
        return 0
    train, test = build_files()
    expected = {TRAIN_FILE: to_jsonl(train), TEST_FILE: to_jsonl(test)}
    if args.write:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        for path, text in expected.items():
            path.write_text(text)
            print(f"wrote {path} ({text.count(chr(10))} lines)")
        return 0
    stale = [str(p) for p, text in expected.items() if not p.exists() or p.read_text() != text]
    print("stale: " + ", ".join(stale) if stale else "prompt files are up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
