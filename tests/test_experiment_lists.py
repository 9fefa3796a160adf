"""The command lists under experiments/ are hours of CPU each: every line must parse and resolve before it is queued.

Checks, per list: each command is ``python -m bench.run`` with one method and one seed and a run id; its flags and
overrides resolve to a checked config (a typo in a key fails here, not an hour into a queue); run ids are unique per
results folder; a search's every trial differs from its base B (the ``search:<method> B`` run) in some setting; and
each unlabelled seeds run has the settings of one labelled trial of the same list (seed, budget, folder and label
aside), so "3 seeds of the chosen setting" cannot silently drift from what the search ran.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from bench.run import build_parser, configs_from_args

LISTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.txt"))
LISTS = [p for p in LISTS if not p.name.startswith("queue")]
RUN_ONLY = {"seed", "run_id", "out", "ablation", "budget_cpu_s", "budget_wall_s", "budget_gpu_hours"}
"""Settings that say which run it is and how long it ran, not what it trains."""


def commands(path: Path) -> list[list[str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def resolved(argv: list[str]):
    assert argv[:3] == ["python", "-m", "bench.run"], f"not a bench.run command: {' '.join(argv)[:80]}"
    parser = build_parser()
    args = parser.parse_args(argv[3:])
    (cfg,) = configs_from_args(args)  # one method x one seed per line: a run id names one run
    return cfg


def search_of(cfg) -> tuple[str, bool] | None:
    """(method, is the base) of a search run labelled ``search:<method> B ...`` (the base: B not followed by ``+``);
    None for any other run."""
    words = cfg.ablation.removeprefix("search:").split() if cfg.ablation.startswith("search:") else []
    if not words:
        return None
    return words[0], len(words) > 1 and words[1].rstrip(",") == "B" and (len(words) == 2 or words[2] != "+")


def settings(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY}


@pytest.mark.parametrize("path", LISTS, ids=[p.name for p in LISTS])
def test_every_line_of_a_list_resolves(path):
    cfgs = [resolved(argv) for argv in commands(path)]
    assert cfgs, f"{path.name} holds no command"
    ids = [(c.out, c.run_id) for c in cfgs]
    assert all(c.run_id for c in cfgs), f"{path.name}: every line needs --run-id (re-queueing resumes by it)"
    assert len(set(ids)) == len(ids), f"{path.name}: a run id repeats within one --out folder"

    bases = {search_of(c)[0]: settings(c) for c in cfgs if search_of(c) and search_of(c)[1]}
    for c in cfgs:
        if search_of(c) and not search_of(c)[1]:
            method = search_of(c)[0]
            assert method in bases, f"{path.name}: trial {c.run_id} has no base run 'search:{method} B'"
            assert settings(c) != bases[method], f"{path.name}: trial {c.run_id} changes nothing from its base B"

    trials = [settings(c) for c in cfgs if c.ablation.startswith("search:")]
    if trials:  # a search list: its seeds runs repeat one of its trials' settings
        for c in cfgs:
            if not c.ablation:
                assert settings(c) in trials, f"{path.name}: seeds run {c.run_id} matches no trial of the search"


def test_the_search_lists_are_checked():
    names = {p.name for p in LISTS}
    assert {"new_methods.txt", "tempflow_guard.txt", "ablations.txt", "flowgrpo_search.txt"} <= names


def test_the_ablation_list_runs_every_finding_against_its_reference():
    """Each label of experiments/ablations.txt is a preset or a variant of reports.ablations.FINDINGS (a typo would
    fall into the report's unclaimed rows, compared with a guessed preset); each variant runs on >= 2 seeds, each
    of them beside its reference on the same seed, and changes some setting of it."""
    from reports.ablations import FINDINGS

    path = next(p for p in LISTS if p.name == "ablations.txt")
    cfgs = [resolved(argv) for argv in commands(path)]
    refs = {f.variant: f.reference for f in FINDINGS}
    by_label: dict[str, dict[int, dict]] = {}
    for c in cfgs:
        assert c.ablation in refs or c.ablation in set(refs.values()), (
            f"{path.name}: {c.run_id} is labelled {c.ablation!r}, which is no variant or reference of "
            "reports/ablations.py FINDINGS: fix the label or add its Finding")
        by_label.setdefault(c.ablation, {})[c.seed] = settings(c)
    for variant, reference in refs.items():
        seeds = by_label.get(variant, {})
        assert len(seeds) >= 2, f"{path.name}: {variant!r} runs on seeds {sorted(seeds)}; the issue asks for >= 2"
        for seed, s in seeds.items():
            ref = by_label.get(reference, {}).get(seed)
            assert ref is not None, f"{path.name}: {variant!r} seed {seed} has no {reference!r} run on that seed"
            assert s != ref, f"{path.name}: {variant!r} seed {seed} changes nothing from {reference!r}"
