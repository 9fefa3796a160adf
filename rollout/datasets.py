"""The references' prompt sets: fetched for users from upstream at pinned commits, checked by sha256.

    python -m rollout.datasets fetch            # all sets into ./data/prompts (or $FLOWRL_PROMPTS_DIR)
    python -m rollout.datasets fetch geneval_test ocr_test
    python -m rollout.datasets list

The files are data of their upstream projects (MIT / Apache-2.0) and are not committed here. Tests point
``FLOWRL_PROMPTS_DIR`` at a local copy and never touch the network.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rollout.prompts import PromptSet, load_geneval_metadata, load_text_prompts

FLOW_GRPO = "yifan123/flow_grpo", "ac4c86e8cae021841f1fde853d340e0db67690dd"
NFT = "NVlabs/DiffusionNFT", "24af5554898d85e93efa492f42b5e9cdf4156e9b"


@dataclass(frozen=True)
class RemoteSet:
    repo: tuple[str, str]
    path: str  # path upstream, also the local path under the prompts dir minus the leading "dataset/"
    sha256: str | None  # None: upstream file not pinned by hash here yet (its hash is printed when fetched)
    kind: str  # "geneval" | "ocr" | "plain"

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo[0]}/{self.repo[1]}/{self.path}"

    @property
    def local(self) -> str:
        return self.path.removeprefix("dataset/")


SETS: dict[str, RemoteSet] = {
    "geneval_test": RemoteSet(FLOW_GRPO, "dataset/geneval/test_metadata.jsonl",
                              "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28", "geneval"),
    "geneval_unseen_test": RemoteSet(FLOW_GRPO, "dataset/geneval_unseen_objects/test_metadata.jsonl",
                                     "174536b49af23b0e2abc4e3215fce5d375de13d6040a50642709240a76dc1a24", "geneval"),
    "geneval_train": RemoteSet(FLOW_GRPO, "dataset/geneval/train_metadata.jsonl", None, "geneval"),
    "ocr_test": RemoteSet(FLOW_GRPO, "dataset/ocr/test.txt",
                          "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc", "ocr"),
    "ocr_train": RemoteSet(FLOW_GRPO, "dataset/ocr/train.txt", None, "ocr"),
    "pickscore_train": RemoteSet(FLOW_GRPO, "dataset/pickscore/train.txt",
                                 "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f", "plain"),
    "pickscore_test": RemoteSet(FLOW_GRPO, "dataset/pickscore/test.txt",
                                "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262", "plain"),
    "drawbench_test": RemoteSet(NFT, "dataset/drawbench/test.txt",
                                "9006b98feabb94b28a2bc0c88de42fd4f31a9ec3c2a19e308a02c5385b7172f0", "plain"),
}


def prompts_dir() -> Path:
    return Path(os.environ.get("FLOWRL_PROMPTS_DIR", "data/prompts"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, root: Path | None = None) -> Path:
    """Download one set (skipped when already present with the right hash); verify its sha256."""
    spec = SETS[name]
    dest = (root or prompts_dir()) / spec.local
    if dest.exists() and (spec.sha256 is None or sha256(dest) == spec.sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(spec.url, timeout=60) as r:  # noqa: S310 -- fixed https URL
        tmp.write_bytes(r.read())
    got = sha256(tmp)
    if spec.sha256 is not None and got != spec.sha256:
        tmp.unlink()
        raise ValueError(f"{spec.url}: sha256 {got} differs from the pinned {spec.sha256}; not saved")
    os.replace(tmp, dest)
    if spec.sha256 is None:
        print(f"{name}: no pinned hash; fetched file has sha256 {got}", file=sys.stderr)
    return dest


def load_prompt_set(name: str, root: Path | None = None) -> PromptSet:
    """Load a reference prompt set from the prompts dir; a missing file says how to fetch it."""
    if name not in SETS:
        raise KeyError(f"unknown prompt set '{name}'; known: {sorted(SETS)}")
    spec = SETS[name]
    path = (root or prompts_dir()) / spec.local
    if not path.exists():
        raise FileNotFoundError(f"prompt set '{name}' not found at {path}; fetch it with "
                                f"`python -m rollout.datasets fetch {name}` (or set FLOWRL_PROMPTS_DIR)")
    if spec.sha256 is not None and sha256(path) != spec.sha256:
        raise ValueError(f"{path}: sha256 differs from the pinned upstream file; re-fetch with "
                         f"`python -m rollout.datasets fetch {name}`")
    if spec.kind == "geneval":
        return load_geneval_metadata(path, name)
    return load_text_prompts(path, kind=spec.kind, name=name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fetch the references' prompt sets at pinned commits.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="Download sets (all when none is named) and check their sha256.")
    f.add_argument("names", nargs="*", help="Set names; see `list`.")
    f.add_argument("--root", type=Path, default=None,
                   help="Destination folder (default: $FLOWRL_PROMPTS_DIR or data/prompts).")
    sub.add_parser("list", help="List the known sets with their upstream URLs.")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for n, s in SETS.items():
            print(f"{n:22s} {s.url}")
        return
    for n in args.names or list(SETS):
        print(f"{n}: {fetch(n, args.root)}")


if __name__ == "__main__":
    main()
