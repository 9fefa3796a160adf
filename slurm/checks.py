"""What slurm.submit checks before ``sbatch``, and how it words what ``sbatch`` refuses.

* :func:`request_problem`: the job's resources against its partition (``scontrol``/``sinfo``). SLURM accepts a job
  that asks for more CPUs, GPUs, nodes or time than a partition has (``EnforcePartLimits=NO``, the default) and
  leaves it pending forever; this check refuses it with the flag to change instead.
* :func:`check_resolvable`: every reward and prompt set of a run resolves on this machine, so a typo is found now
  rather than on the node after the queue.
* :func:`sbatch_refusal`: what sbatch itself refused (an account, a QOS, a constraint...) as one line that names
  the flag and the fix.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bench.config import RunConfig
from slurm.scheduler import Partition


@dataclass(frozen=True)
class Request:
    """What one array task asks of SLURM (slurm.submit's cluster flags)."""

    partition: str | None
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: float
    time_min: int


# ------------------------------------------------------------------------------------------------ the partition
def request_problem(request: Request, partitions: dict[str, Partition]) -> str | None:
    """Why ``request`` can never run on its partition (one sentence naming the flag and the fix), or None."""
    partition = _chosen(request.partition, partitions)
    if isinstance(partition, str):
        return partition
    for check in (_nodes, _gpus, _cpus, _memory, _time):
        problem = check(request, partition)
        if problem:
            return problem
    return None


def _chosen(name: str | None, partitions: dict[str, Partition]) -> Partition | str:
    """The partition the job goes to (``--partition`` or the cluster's default), or why there is none."""
    names = ", ".join(sorted(partitions))
    if name is None:
        default = [p for p in partitions.values() if p.is_default]
        return default[0] if default else f"this cluster has no default partition: pass --partition (one of {names})"
    if name not in partitions:
        return f"--partition {name}: there is no such partition here; pass one of {names} (sinfo lists them)"
    return partitions[name]


def _nodes(request: Request, partition: Partition) -> str | None:
    limit = min(partition.nodes, partition.max_nodes or partition.nodes)
    if request.nodes <= limit:
        return None
    return (f"--nodes {request.nodes}: partition {partition.name} lets one job use at most {limit} node(s), so the "
            f"job would wait forever; pass --nodes {limit} or fewer")


def _gpus(request: Request, partition: Partition) -> str | None:
    if request.gpus_per_node <= partition.node_gpus:
        return None
    if partition.node_gpus == 0:
        return (f"partition {partition.name} has no GPUs: pass --gpus-per-node 0 (one CPU process per node), or a "
                "--partition with GPUs")
    return (f"--gpus-per-node {request.gpus_per_node}: the nodes of partition {partition.name} have at most "
            f"{partition.node_gpus} GPUs; pass --gpus-per-node {partition.node_gpus} or fewer")


def _cpus(request: Request, partition: Partition) -> str | None:
    needed = request.tasks_per_node * request.cpus_per_task
    if needed <= partition.node_cpus:
        return None
    fits = partition.node_cpus // request.tasks_per_node
    fix = f"pass --cpus-per-task {fits} or fewer" if fits else "run fewer processes per node (--gpus-per-node)"
    return (f"--cpus-per-task {request.cpus_per_task}: {request.tasks_per_node} process(es) per node x "
            f"{request.cpus_per_task} CPUs = {needed} CPUs, but the nodes of partition {partition.name} have at most "
            f"{partition.node_cpus}; {fix}")


def _memory(request: Request, partition: Partition) -> str | None:
    limit_gb = partition.node_memory_mb // 1024
    if not request.mem_gb or request.mem_gb * 1024 <= partition.node_memory_mb:
        return None
    return (f"--mem-gb {request.mem_gb:g}: the nodes of partition {partition.name} have at most "
            f"{partition.node_memory_mb} MB; pass --mem-gb {limit_gb} or less, or 0 for the partition's default")


def _time(request: Request, partition: Partition) -> str | None:
    limit = partition.max_time_min
    if limit is None or request.time_min <= limit:
        return None
    return (f"--time-min {request.time_min}: partition {partition.name} allows at most {limit:g} minutes per job; "
            f"pass --time-min {limit:g} or less (a task that reaches its limit is requeued and resumes)")


# ------------------------------------------------------------------------------------------------ the runs
def check_resolvable(cfg: RunConfig, setting_name: Callable[[str], str]) -> None:
    """Every reward and prompt set that run ``cfg`` will load resolves here: reward names in its world (and their
    modules import), prompt sets by name or file. Raises ``ValueError`` naming the setting (``setting_name(key)``
    words it, with its flag) and the fix."""
    from worlds import load_world

    try:
        world = load_world(cfg.world, cfg.task)
    except ValueError as err:
        raise ValueError(f"{setting_name('task')}: {err}") from None
    try:
        stages = list(_stages(cfg, world))
    except (OSError, ValueError) as err:
        raise ValueError(f"{setting_name('reward_schedule')}: {err}; fix the schedule file") from None
    for key, reward, prompts in stages:
        _check_reward(world, reward, setting_name(key))
        for prompt_key, prompt_set in prompts:
            _check_prompts(world, prompt_set, setting_name(prompt_key))


def _check_reward(world, reward: str | dict, setting: str) -> None:
    """Each reward name of ``reward`` maps to a reward of ``world`` whose module imports."""
    from rewards import load_reward_class, parse_reward_spec

    try:
        for name in parse_reward_spec(world.reward_spec(reward)):
            load_reward_class(name)
    except (ImportError, ValueError) as err:
        raise ValueError(f"{setting}: reward {reward!r} does not resolve here: {err}") from None


def _check_prompts(world, prompt_set: str, setting: str) -> None:
    """``prompt_set`` (a name or a file) loads in ``world``."""
    try:
        world.prompts(prompt_set)
    except (OSError, KeyError, ValueError) as err:
        text = err.args[0] if err.args else str(err)
        raise ValueError(f"{setting}: prompt set {prompt_set!r} does not load here: {text}") from None


def _stages(cfg: RunConfig, world) -> Iterator[tuple[str, str | dict, list[tuple[str, str]]]]:
    """``(setting, reward, [(setting, prompt set)...])`` for every stage a run trains (or evaluates) on."""
    from methods import registry

    trains = registry.get(cfg.method).cls.trains
    tests = [("test_prompts", cfg.test_prompts or world.test_set)] if (
        cfg.eval_every or cfg.eval_every_s or not trains) else []
    if trains and cfg.reward_schedule:
        from rewards.schedule import RewardSchedule

        schedule = RewardSchedule.from_list(json.loads(Path(cfg.reward_schedule).read_text()))
        for stage in schedule.stages:
            yield "reward_schedule", stage.weights, [("reward_schedule", stage.prompt_set)]
        yield "reward", cfg.reward, tests
        return
    yield "reward", cfg.reward, ([("train_prompts", cfg.train_prompts or world.train_set)] if trains else []) + tests


# ------------------------------------------------------------------------------------------------ sbatch
# (pattern in sbatch's error output, the fix); the first match wins, so the specific ones come first
_SBATCH_FIXES: tuple[tuple[str, str], ...] = (
    (r"invalid partition", "--partition {partition}: there is no such partition here; sinfo lists them"),
    (r"generic resource|gres", "the partition has no GPUs of this kind: pass --gpus-per-node 0 (one CPU process "
                               "per node), or a --partition with GPUs"),
    (r"memory specification", "--mem-gb {mem_gb}: no node of the partition has that much memory; pass a smaller "
                              "--mem-gb, or 0 for the partition's default"),
    (r"feature specification", "--constraint {constraint}: no node of the partition has this feature; "
                               "`sinfo -o '%N %f'` lists the features"),
    (r"invalid account", "--account {account}: not an account of yours on this partition; "
                         "`sacctmgr show assoc user=$USER format=account,partition` lists yours"),
    (r"invalid qos", "--qos {qos}: not a QOS you may use; `sacctmgr show assoc user=$USER format=qos` lists yours"),
    (r"time limit", "--time-min {time_min}: over the time limit of the partition, account or QOS; pass a smaller "
                    "--time-min"),
    (r"default partition|no partition specified", "this cluster has no default partition: pass --partition"),
    (r"accounting/qos policy|qosmax|assocmax", "the request is over a limit of your account or QOS: ask for fewer "
                                               "--nodes, --gpus-per-node or --time-min, or pass another --qos"),
    (r"node configuration is not available", "no node of the partition can hold one task of this request "
                                             "(--nodes, --gpus-per-node, --cpus-per-task, --mem-gb); "
                                             "`sinfo -o '%P %N %c %m %G'` shows what the nodes have"),
)


def sbatch_refusal(stderr: str, flags: dict[str, object]) -> str:
    """sbatch's refusal (its error output) as one line: its own error and the fix, with the flags' values."""
    errors = [line.split("error:", 1)[1].strip() for line in stderr.splitlines() if "error:" in line]
    said = errors[-1] if errors else (stderr.strip().splitlines() or ["no message"])[-1]
    for pattern, fix in _SBATCH_FIXES:
        if re.search(pattern, stderr, re.IGNORECASE):
            return f"sbatch refused the job ({said}): {fix.format(**flags)}"
    return f"sbatch refused the job: {said}; fix the flag it names and submit again"
