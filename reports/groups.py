"""Seeds are seeds: which runs pool into one curve, which clock a comparison is timed on, what a curve is called.

Conventions (every report table and plot follows them):

* **Groups.** Runs pool as seeds of one curve only when they share world, reward, method, ablation label and config
  fingerprint (:func:`bench.records.config_fingerprint`: the resolved config without seed, run id, output folder,
  label, length and logging settings). Runs of different settings are separate groups, never pooled. Runs without
  a config in their meta.json (hand-made records) have no fingerprint and pool by the other four keys.
* **Repeats.** Within a group, runs of the same seed are repeats: the seed counts once, through the run with the
  longest training clock (ties: the latest ``start_time``). The others are listed in :attr:`Group.repeats`, and the
  report names them.
* **Clock.** ``auto`` times a (world, reward) panel on ``cum/cpu_s`` (process CPU seconds of training, the
  clock that contention on a shared machine does not stretch) when every trained run there was budgeted by CPU
  time (config ``budget_cpu_s > 0``) and logged it, otherwise on ``cum/wall_s``; ``gpu_hours`` is
  ``cum/gpu_hours`` (training wall-clock x devices). Every clock excludes evaluation. Clock values are handled in
  seconds (GPU-hours x 3600).
* **Labels.** A group is called by its method; when one panel has several groups of a method, each also gets its
  ablation label (when no sibling shares it), else the config settings that differ, else its first run id.
  A CFG baseline group is called ``CFG <guidance> baseline (no training)``: it is a level, not a method with a time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from bench.config import with_defaults
from bench.records import FINGERPRINT_IGNORES, config_fingerprint, load_meta, read_meta

BASELINE_METHOD = "cfg"  # an untrained baseline: only an epoch-0 evaluation
# in a pair, the method listed first is A (the one whose speedup is reported): newer methods before NFT, NFT before
# FlowGRPO and its variants
METHOD_ORDER = ("dgpo", "awm", "nft", "flowgrpo", "flowgrpo-fast", "grpo-guard", "tempflow-grpo")
RUN_FIELDS = ("run_id", "world", "reward", "method", "seed", "ablation", "config_fingerprint", "start_time")
HEADLINE_KEYS = ("eval/strict_accuracy", "eval/geneval_mean", "eval/avg_mean", "reward/avg_mean")


@dataclass(frozen=True)
class Clock:
    """A training clock: its record key, the factor from its unit to seconds, and how tables and axes name it."""

    name: str
    key: str
    to_seconds: float
    description: str
    short: str


CLOCKS: dict[str, Clock] = {
    "wall": Clock("wall", "cum/wall_s", 1.0, "training wall-clock (evaluation excluded)", "wall-clock"),
    "cpu": Clock("cpu", "cum/cpu_s", 1.0, "training CPU time (evaluation excluded)", "CPU time"),
    "gpu_hours": Clock("gpu_hours", "cum/gpu_hours", 3600.0,
                       "device time: training wall-clock x devices (evaluation excluded)", "device time"),
}
EPOCHS = Clock("epoch", "epoch", 1.0, "training epochs", "epochs")  # not a time: the ablation plots' second axis
CLOCK_CHOICES = ("auto", *CLOCKS)


@dataclass
class Group:
    """Runs that are seeds of one setting: ``runs`` holds one run per seed (sorted by seed)."""

    world: str
    reward: str
    method: str
    ablation: str | None
    fingerprint: str | None
    runs: list[str]
    seeds: list[int]
    repeats: dict[str, str] = field(default_factory=dict)  # dropped repeat run -> the run kept for its seed
    settings: dict[str, Any] = field(default_factory=dict)  # flattened config of the first run
    label: str = ""

    @property
    def trained(self) -> bool:
        return self.method != BASELINE_METHOD


@dataclass
class Panel:
    """One (world, reward) of a results root: its clock, its headline metric and its groups."""

    world: str
    reward: str
    clock: Clock
    metric: str | None
    groups: list[Group]

    @property
    def trained(self) -> list[Group]:
        return [g for g in self.groups if g.trained]

    @property
    def baselines(self) -> list[Group]:
        return [g for g in self.groups if not g.trained]

    @property
    def ordered(self) -> list[Group]:
        """The trained groups in :data:`METHOD_ORDER` (then by method name and label)."""
        rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        return sorted(self.trained, key=lambda g: (rank.get(g.method, len(rank)), g.method, g.label))

    def pairs(self, a: str | None = None, b: str | None = None) -> list[tuple[Group, Group]]:
        """(A, B) for every two trained groups of different methods, A's method first in :data:`METHOD_ORDER`;
        ``a`` / ``b`` keep only pairs of those methods, and when both are given they are A and B in that role
        whatever their order (``a="grpo-guard", b="flowgrpo"``: the variant's speedup over FlowGRPO)."""
        ordered = self.ordered
        if a is not None and b is not None and a != b:
            return [(x, y) for x in ordered if x.method == a for y in ordered if y.method == b]
        found = [(x, y) for i, x in enumerate(ordered) for y in ordered[i + 1:] if x.method != y.method]
        return [(x, y) for x, y in found if (a is None or x.method == a) and (b is None or y.method == b)]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"optim.lr": 1e-3, ...}``; lists become their JSON text so values compare and print."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def run_table(df: pd.DataFrame, root: Path | str | None = None) -> pd.DataFrame:
    """One row per run of ``df``: its record columns, meta (ablation, fingerprint, start time, CPU budget,
    flattened config from ``root/<run_id>/meta.json`` when ``root`` is given) and whether it logged CPU time."""
    runs = df.drop_duplicates("run_id")[[c for c in RUN_FIELDS if c in df.columns]]
    meta = load_meta(root) if root is not None else pd.DataFrame(columns=["run_id"])
    runs = runs.merge(meta[["run_id", *(c for c in meta.columns if c not in runs.columns)]], on="run_id", how="left")
    for column in RUN_FIELDS:
        if column not in runs.columns:
            runs[column] = None
    runs["ablation"] = runs["ablation"].map(lambda v: v if isinstance(v, str) and v else None)
    runs["config_fingerprint"] = runs["config_fingerprint"].map(lambda v: v if isinstance(v, str) else None)
    configs = {run_id: _config(root, run_id) for run_id in runs["run_id"]}
    # recomputed on the config completed with today's defaults, so runs made before an option existed still pool
    # with today's runs of the same setting (bench.config.with_defaults)
    runs["config_fingerprint"] = [config_fingerprint(with_defaults(configs[r])) if configs[r] else fp
                                  for r, fp in zip(runs["run_id"], runs["config_fingerprint"])]
    runs["settings"] = [flatten(with_defaults(configs[r])) if configs[r] else {} for r in runs["run_id"]]
    runs["budget_cpu_s"] = [float(s.get("budget_cpu_s") or 0.0) for s in runs["settings"]]
    cpu = df[df["key"] == CLOCKS["cpu"].key].groupby("run_id")["value"].max()
    runs["cpu_logged"] = runs["run_id"].map(cpu).fillna(0.0).gt(0).to_numpy()
    return runs.reset_index(drop=True)


def _config(root: Path | str | None, run_id: str) -> dict[str, Any]:
    """The stored config of a run (empty without ``root`` or meta.json)."""
    if root is None or not (Path(root) / run_id / "meta.json").exists():
        return {}
    return read_meta(Path(root) / run_id).get("config") or {}


def resolve_clock(choice: str, runs: pd.DataFrame) -> Clock:
    """``wall`` / ``cpu`` / ``gpu_hours`` as asked; ``auto``: CPU time when every trained run in ``runs`` had a CPU
    budget and logged CPU time, else wall-clock (see the module docstring)."""
    if choice != "auto":
        return CLOCKS[choice]
    trained = runs[runs["method"] != BASELINE_METHOD]
    cpu = not trained.empty and bool((trained["budget_cpu_s"] > 0).all() and trained["cpu_logged"].all())
    return CLOCKS["cpu" if cpu else "wall"]


def headline_key(df: pd.DataFrame) -> str | None:
    """The first of :data:`HEADLINE_KEYS` that ``df`` logged: the metric a panel compares."""
    present = set(df["key"].unique())
    return next((key for key in HEADLINE_KEYS if key in present), None)


def clock_length(df: pd.DataFrame, clock: Clock) -> pd.Series:
    """Per run: the largest value of the clock it logged (0 when none), in seconds."""
    if clock.key == "epoch":
        return df.groupby("run_id")["epoch"].max().astype(float)
    values = df[df["key"] == clock.key].groupby("run_id")["value"].max() * clock.to_seconds
    return values.reindex(df["run_id"].unique()).fillna(0.0)


def group_runs(runs: pd.DataFrame, length: Mapping[str, float]) -> list[Group]:
    """Groups of ``runs`` (rows of :func:`run_table`) by the seed rule, repeats dropped by ``length`` (run -> clock
    seconds), labelled (see the module docstring)."""
    keys = ["world", "reward", "method", "ablation", "config_fingerprint"]
    frame = runs.assign(length=runs["run_id"].map(length).fillna(0.0),
                        start=pd.to_numeric(runs["start_time"], errors="coerce").fillna(-np.inf))
    groups = []
    for key, members in frame.groupby(keys, dropna=False, sort=True):
        world, reward, method, ablation, fingerprint = (None if _missing(v) else v for v in key)
        kept, repeats = _one_run_per_seed(members)
        first = members.set_index("run_id").loc[kept[0]]
        groups.append(Group(world, reward, method, ablation, fingerprint, runs=kept,
                            seeds=[int(s) for s in members.set_index("run_id").loc[kept, "seed"]],
                            repeats=repeats, settings=dict(first["settings"])))
    _label(groups)
    return groups


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _one_run_per_seed(members: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Per seed the run with the longest clock (then the latest start); returns kept runs and dropped -> kept."""
    kept, repeats = [], {}
    for _, same_seed in members.groupby("seed", sort=True):
        ranked = same_seed.sort_values(["length", "start"], ascending=False)
        kept.append(ranked["run_id"].iloc[0])
        repeats.update({run: kept[-1] for run in ranked["run_id"].iloc[1:]})
    return kept, repeats


def _label(groups: list[Group]) -> None:
    """Set each group's label: method (or CFG level name), plus what tells it apart from its siblings."""
    for group in groups:
        group.label = _trained_name(group) if group.trained else _baseline_name(group.settings)
    siblings: dict[tuple, list[Group]] = {}
    for group in groups:
        siblings.setdefault((group.world, group.reward, group.label), []).append(group)
    for same in siblings.values():
        if len(same) < 2:
            continue
        ablations = [g.ablation for g in same]
        differing = _differing_settings([g.settings for g in same])
        for group in same:
            own_label = group.ablation is not None and ablations.count(group.ablation) == 1
            suffix = group.ablation if own_label else _settings_text(group.settings, differing) or group.runs[0]
            group.label = f"{group.label} [{suffix}]"


def _trained_name(group: "Group") -> str:
    """Method name and its evaluation guidance (NFT is evaluated without CFG, FlowGRPO with it, as in the papers), so
    a reader sees why one curve starts higher: ``nft (no CFG)``, ``flowgrpo (CFG 4.5)``."""
    from methods.registry import REGISTRY

    entry = REGISTRY.get(group.method)
    guidance = group.settings.get(f"{entry.config_field}.eval_guidance") if entry is not None else None
    if guidance is None:
        return group.method
    return f"{group.method} ({'no CFG' if float(guidance) == 1.0 else f'CFG {float(guidance):g}'})"


def _baseline_name(settings: Mapping[str, Any]) -> str:
    guidance = settings.get("cfg.guidance")
    return f"CFG {guidance:g} baseline (no training)" if guidance is not None else "CFG baseline (no training)"


def _differing_settings(all_settings: Iterable[Mapping[str, Any]], most: int = 3) -> list[str]:
    """Config keys (not length/logging ones) whose values are not the same in every one of ``all_settings``."""
    all_settings = list(all_settings)
    names = sorted({k for s in all_settings for k in s if k.split(".")[-1] not in FINGERPRINT_IGNORES})
    return [k for k in names if len({json.dumps(s.get(k), default=str) for s in all_settings}) > 1][:most]


def _settings_text(settings: Mapping[str, Any], names: list[str]) -> str:
    return ", ".join(f"{name}={settings.get(name)}" for name in names)


def panels(df: pd.DataFrame, runs: pd.DataFrame, clock: str = "auto") -> list[Panel]:
    """One :class:`Panel` per (world, reward) of ``df``: clock resolved, runs grouped, repeats dropped."""
    out = []
    for (world, reward), part in df.groupby(["world", "reward"], sort=True):
        members = runs[runs["run_id"].isin(part["run_id"].unique())]
        resolved = resolve_clock(clock, members)
        groups = group_runs(members, clock_length(part, resolved))
        out.append(Panel(world, reward, resolved, headline_key(part), groups))
    return out
