"""Sample grid of the shapes base model without and with CFG (the README's figure).

    python -m worlds.shapes.sample_grid --out docs/img/shapes_samples.png

Rows: one test prompt per GenEval tag (the same noise in both panels); left panel guidance 1.0, right panel 4.5.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.eval import EvalConfig, generate
from worlds import load_world

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sample grid of the shapes base model without and with CFG.")
    ap.add_argument("--out", type=Path, default=Path("docs/img/shapes_samples.png"), help="Output PNG path.")
    ap.add_argument("--images", type=int, default=4, help="Images per prompt (columns per panel).")
    ap.add_argument("--scale", type=int, default=3, help="Nearest-neighbour upscaling of the 32 px images.")
    args = ap.parse_args(argv)
    world = load_world("shapes")
    policy = world.load_policy()
    test = world.test_prompts()
    prompts = [next(p for p, m in zip(test.prompts, test.metadata) if m["tag"] == tag) for tag in TAGS]
    panels = []
    for guidance in (1.0, 4.5):
        cfg = EvalConfig(images_per_prompt=args.images, num_steps=world.eval_steps, guidance=guidance)
        imgs = (generate(policy, prompts, cfg).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        panels.append(imgs.reshape(len(prompts), args.images, 32, 32, 3))
    s, pad, label_w, head = 32 * args.scale, 4, 330, 22
    width = label_w + 2 * (args.images * (s + pad) + 3 * pad)
    canvas = Image.new("RGB", (width, head + len(prompts) * (s + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(("no CFG (guidance 1.0)", "CFG 4.5")):
        draw.text((label_w + k * (args.images * (s + pad) + 3 * pad), 4), title, fill="black")
    for r, prompt in enumerate(prompts):
        y = head + r * (s + pad)
        draw.text((4, y + s // 2 - 6), prompt, fill="black")
        for k, panel in enumerate(panels):
            for c in range(args.images):
                x = label_w + k * (args.images * (s + pad) + 3 * pad) + c * (s + pad)
                canvas.paste(Image.fromarray(panel[r, c]).resize((s, s), Image.NEAREST), (x, y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
