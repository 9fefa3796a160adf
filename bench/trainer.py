"""The trainer: one loop drives every method the same way.

Components, declared up front in :meth:`Trainer.__init__`: world (model, prompts), policy with LoRA adapters,
method (from the registry), reward (async), prompt sampler, evaluation protocol, results recorder, checkpoint.

Per epoch: [eval] -> rollout (method's RolloutSpec, shared samplers) with rewards scored in a thread pool while
sampling continues -> gather rewards over ranks -> group advantages -> method.train_epoch -> records + checkpoint.
Wall-clock is measured per phase; device-hours = training wall-clock x number of devices (evaluation excluded
from the budget, recorded separately).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from bench import checkpoint
from bench.config import RunConfig
from bench.eval import EvalConfig, evaluate
from bench.progress import RunBar, phase_bar
from bench.records import RunRecorder, compact_run, make_run_id
from worlds import load_world
from methods import registry
from methods.base import RolloutBatch, derive_seed, sample_generators
from rewards import AsyncRewards, build_reward
from rollout import lora
from rollout.prompts import GroupedSampler
from rollout.samplers import branch_cost, sample, sample_branches


PRECISION = {torch.float16: "fp16-autocast", torch.bfloat16: "bf16-autocast"}
"""How a run's meta.json names its autocast dtype (none: "fp32")."""


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_objects(obj) -> list:
    """All ranks' objects in rank order (a list of one without torch.distributed)."""
    world, _ = world_info()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def from_rank0(obj):
    """Rank 0's value of ``obj`` on every rank (``obj`` itself without torch.distributed).

    Used for what only rank 0 knows or must decide alone: the run id (a time-stamped default differs per process)
    and the last epoch on disk (only rank 0 owns the results recorder).
    """
    return gather_objects(obj)[0]


@dataclass
class SampledPart:
    """One sampling batch's rows, what the sampler kept of them and the futures of their rewards."""

    prompts: list[str]
    metadata: list[dict]
    cond: tuple[torch.Tensor, torch.Tensor]
    ids: list[int]
    """Each row's sample position in the epoch (a branch row: its trunk sample's)."""
    futures: list = field(default_factory=list)
    x0: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    next_latents: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    stochastic: list[bool] = field(default_factory=list)
    means: torch.Tensor | None = None


def headline_eval(values: dict[str, float]) -> float | None:
    """The evaluation number a progress line shows: strict GenEval accuracy, else the mean evaluation reward (the
    weighted average of an ``eval_reward`` spec: ``eval/avg``)."""
    return values.get("eval/strict_accuracy", values.get("eval/avg_mean", values.get("eval/avg")))


class Trainer:
    def __init__(self, cfg: RunConfig, policy=None):
        self.cfg = cfg
        self.world_size, self.rank = world_info()
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.world = load_world(cfg.world, cfg.task)
        self.resolution = cfg.resolution or self.world.resolution
        self.policy = policy if policy is not None else self.world.load_policy(self.device)
        entry = registry.get(cfg.method)
        self.method_cfg = getattr(cfg, entry.config_field)  # resolve() applied the variant (flowgrpo-fast)
        if entry.cls.trains:
            lora.add_lora(self.policy.transformer, cfg.lora, seed=cfg.seed)
        self.method = registry.build_method(cfg.method, self.policy, self.method_cfg, cfg.optim, cfg.seed)
        if entry.cls.trains:
            self.method.use_backend(cfg.backend, cfg.zero_stage)
        self.reward_spec = self.world.reward_spec(cfg.reward)
        self.test_set = (self.world.prompts(cfg.test_prompts or self.world.test_set)
                         if cfg.eval_every or cfg.eval_every_s or not entry.cls.trains else None)
        self.train_set = self.sampler = self.rewards = None
        self.schedule, self.stage = None, 0
        if entry.cls.trains and cfg.reward_schedule:
            from rewards.schedule import RewardSchedule

            self.schedule = RewardSchedule.from_list(json.loads(Path(cfg.reward_schedule).read_text()))
            self.stage = -1
            self._apply_stage(0)
        elif entry.cls.trains:
            self._set_task(self.reward_spec, self.world.prompts(cfg.train_prompts or self.world.train_set))
        # the evaluation noise is the same for every method and seed, so their numbers compare on equal footing
        self.eval_cfg = EvalConfig(images_per_prompt=cfg.eval_images_per_prompt,
                                   num_steps=cfg.eval_steps or self.world.eval_steps,
                                   guidance=self.method.eval_guidance(), seed=1234,
                                   max_prompts=cfg.eval_prompts or None, height=self.resolution, width=self.resolution)
        # every rank must agree on the run folder: resume reads the checkpoint that rank 0 writes there
        self.run_id = from_rank0(cfg.run_id or make_run_id(cfg.method, cfg.reward, cfg.seed))
        cfg.run_id = self.run_id
        self.run_dir = Path(cfg.out) / self.run_id
        self.devices = self.world_size
        self.state = {"epoch": 0, "wall_s": 0.0, "cpu_s": 0.0, "eval_s": 0.0, "images": 0, "forward": 0, "backward": 0}
        self.recorder = None
        self.writer = None
        if self.rank == 0:
            meta = {"method": cfg.method, "world": self.world.name, "reward": cfg.reward, "seed": cfg.seed,
                    "config": asdict(cfg), "ablation": cfg.ablation or None, "world_size": self.world_size,
                    "device": str(self.device), "precision": PRECISION.get(self.policy.options.autocast_dtype, "fp32"),
                    "reward_spec": self.reward_spec}
            self.recorder = RunRecorder(cfg.out, self.run_id, meta)
            self._note_resume_changes(meta["config"])
            self.writer = self._live_writer()

    def _note_resume_changes(self, config: dict) -> None:
        """A resumed run whose settings changed (a longer budget, say) appends what changed to ``resumes.jsonl``:
        meta.json keeps the settings the run started with, this file the rest of its history."""
        from bench.config import flatten
        from bench.records import collect_provenance

        before, now = flatten(self.recorder.meta.get("config") or {}), flatten(config)
        changed = {k: [before.get(k), v] for k, v in now.items() if before.get(k) != v}
        if self.recorder.meta.get("run_id") and changed and (self.run_dir / "records").exists():
            line = {"time": time.time(), "changed": changed,
                    "git_commit": collect_provenance().get("git_commit")}
            with open(self.run_dir / "resumes.jsonl", "a") as f:
                f.write(json.dumps(line, default=str) + "\n")

    def _apply_stage(self, epoch: int) -> None:
        """Switch reward and training prompts when a staged schedule enters a new stage (derived from the epoch
        alone, so a resumed run lands in the right stage)."""
        index, stage = self.schedule.stage_at(epoch)
        if index != self.stage:
            self.stage = index
            self._set_task(self.world.reward_spec(stage.weights), self.world.prompts(stage.prompt_set))

    def _set_task(self, reward_spec: str, train_set) -> None:
        """The reward trained on and the prompts sampled from (once, or at every stage of a schedule)."""
        if self.rewards is not None:
            self.rewards.close()
        self.reward_spec = reward_spec
        self.rewards = AsyncRewards(build_reward(reward_spec), max_workers=self.cfg.reward_workers)
        self.train_set = train_set
        self.sampler = GroupedSampler(len(train_set), self.cfg.images_per_prompt, self.cfg.prompts_per_epoch,
                                      self.cfg.rollout_batch_size, self.world_size, self.rank, self.cfg.seed)

    # ------------------------------------------------------------------------------------------------ logging
    def _live_writer(self):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, epoch: int, values: dict[str, float]) -> None:
        """Append row ``epoch`` to the results store (rank 0) and the live curves."""
        if self.recorder is None:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        self.recorder.log(epoch, clean)
        self.recorder.flush()  # one part per row: a crash never loses a finished epoch
        if self.writer is not None:
            for k, v in clean.items():
                self.writer.add_scalar(k, v, epoch)
        if self.cfg.wandb:
            try:
                import wandb

                if wandb.run is None:
                    wandb.init(project="flowrl-bench", name=self.run_id, config=asdict(self.cfg))
                wandb.log(clean, step=epoch)
            except ImportError:
                pass

    # ------------------------------------------------------------------------------------------------ phases
    def evaluate(self, epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        ctx = self.method.eval_context() if self.method.trains else contextlib.nullcontext()
        with ctx, torch.no_grad():
            reward = (build_reward(self.world.reward_spec(self.cfg.eval_reward)) if self.cfg.eval_reward
                      else self.world.eval_reward())
            result = evaluate(self.policy, self.test_set, reward, self.eval_cfg, progress=self.rank == 0)
        rep = result["report"]
        out = {}
        if "per_image_mean" in rep:
            for metric in ("strict_accuracy", "accuracy", "score"):
                out[f"eval/{metric}"] = rep["geneval_overall_tag_mean"][metric]
                if metric == "accuracy":  # the official GenEval number (6-tag mean), as the papers report it
                    out["eval/geneval_mean"] = rep["geneval_overall_tag_mean"][metric]
                out[f"eval/{metric}/per_image"] = rep["per_image_mean"][metric]
                for tag, vals in rep["per_tag"].items():
                    out[f"eval/{metric}/{tag}"] = vals[metric]
        else:
            out.update({f"eval/{k}": v for k, v in rep.items()})
        out["eval/images"] = len(result["rows"])
        out["time/eval_s"] = time.perf_counter() - t0
        if self.writer is not None:
            grid = result["images"][: 8 * self.eval_cfg.images_per_prompt]
            self.writer.add_images("eval/samples", grid, epoch)
        return out

    def rollout(self, epoch: int) -> tuple[RolloutBatch, dict[str, float]]:
        spec = self.method.rollout_spec(epoch)
        sig = (self.policy.sigmas(spec.num_steps, self.resolution, self.resolution) if spec.sigmas is None
               else spec.sigmas)
        if len(sig) != spec.num_steps + 1:
            raise ValueError(f"RolloutSpec.sigmas has {len(sig)} entries for {spec.num_steps} steps: give num_steps "
                             "+ 1")
        if spec.timesteps is not None and (spec.sigmas is None or len(spec.timesteps) != spec.num_steps):
            raise ValueError("RolloutSpec.timesteps needs RolloutSpec.sigmas, the table it belongs to, and one "
                             "timestep per step")
        shape = self.policy.latent_shape(self.resolution, self.resolution)
        parts: list[SampledPart] = []
        t0 = time.perf_counter()
        adapter = lora.use_adapter(self.policy.transformer, spec.adapter) if spec.adapter != lora.TRAINABLE \
            else contextlib.nullcontext()
        with adapter, torch.no_grad():
            positions = self.sampler.batch_positions(spec.whole_groups)
            batches = self.sampler.batches(epoch, spec.whole_groups)
            for b, idx in enumerate(phase_bar(batches, f"rollout {epoch}", self.rank == 0)):
                prompts = [self.train_set.prompts[i] for i in idx]
                metadata = [self.train_set.metadata[i] for i in idx]
                cond = self.policy.encode(prompts)
                ids = positions[b]
                g = sample_generators(self.cfg.seed, epoch, ids, salt=0)
                x = torch.stack([torch.randn(shape, generator=gi) for gi in g]).to(self.device)
                sample_part = self._sample_branches if spec.branches else self._sample
                parts.append(sample_part(spec, sig, x, g, SampledPart(prompts, metadata, cond, ids)))
        t_sample = time.perf_counter() - t0
        futures = [f for part in parts for f in part.futures]
        scores = iter([self.rewards.result(f) for f in phase_bar(futures, "reward", self.rank == 0)])
        t_reward_wait = time.perf_counter() - t0 - t_sample
        part_scores = [[next(scores) for _ in part.futures] for part in parts]
        cat = lambda xs: torch.cat(xs).cpu()  # noqa: E731
        batch = RolloutBatch(
            prompts=[p for part in parts for p in part.prompts], metadata=[m for part in parts for m in part.metadata],
            embeds=cat([part.cond[0] for part in parts]), pooled=cat([part.cond[1] for part in parts]),
            x0=cat([part.x0 for part in parts]), sigmas=sig,
            sample_ids=torch.tensor([i for part in parts for i in part.ids]))
        groups = self.sampler.epoch_groups(epoch, spec.whole_groups)
        batch.group_ids = torch.tensor([groups[i] for i in batch.sample_ids.tolist()])
        if spec.keep_trajectory:
            batch.latents = cat([part.latents for part in parts])
            batch.next_latents = cat([part.next_latents for part in parts])
            batch.log_probs = cat([part.log_probs for part in parts])
            batch.stochastic = parts[0].stochastic
        if spec.keep_means:
            batch.means = cat([part.means for part in parts])
        # one reward per row (plain), or per row and branch point [rows, S] (branching)
        join = (lambda xs: torch.stack(xs, 1)) if spec.branches else (lambda xs: xs[0])  # noqa: E731
        batch.rewards = {k: torch.cat([join([s[k] for s in scored]) for scored in part_scores])
                         for k in part_scores[0][0]}
        cfg_mult = 2 if spec.guidance != 1.0 else 1
        noises = sum(len(part.ids) for part in parts) // (spec.branches or 1) * self.world_size
        forwards, images = (branch_cost(spec.num_steps, spec.branches, spec.branch_points) if spec.branches
                            else (spec.num_steps, 1))
        counts = {"count/rollout_forward": noises * forwards * cfg_mult}
        return batch, {"time/rollout_s": t_sample, "time/reward_wait_s": t_reward_wait, **counts,
                       "images": noises * images}

    def _velocity_fn(self, spec, cond):
        """The sampler's velocity function over ``cond``'s samples; a batch of K times as many rows (branches, row
        r of sample r // K) gets each sample's conditioning repeated K times. With ``spec.timesteps`` the transformer
        gets the timestep given for the sigma of each step."""
        steps = None if spec.timesteps is None else dict(zip(spec.sigmas[:-1].tolist(), spec.timesteps.tolist()))

        def velocity(x_, s):
            k = x_.shape[0] // cond[0].shape[0]
            c = cond if k == 1 else (cond[0].repeat_interleave(k, 0), cond[1].repeat_interleave(k, 0))
            if steps is not None and float(s) not in steps:
                raise ValueError(f"RolloutSpec.timesteps: the solver evaluated sigma {float(s)}, not a step of the "
                                 "given table; use a solver that steps on the table (euler, dpm2)")
            return self.policy.velocity(x_, s, c, guidance=spec.guidance, integer_timestep=spec.integer_timestep,
                                        timestep=None if steps is None else steps[float(s)])
        return velocity

    def _latent_dtype(self):
        """The latents' dtype between sampler steps on GPU: fp16 (the references), bf16 for a bf16-autocast family."""
        if self.device.type != "cuda":
            return None
        return torch.bfloat16 if self.policy.options.autocast_dtype == torch.bfloat16 else torch.float16

    def _sample(self, spec, sig, x, g, part: "SampledPart") -> "SampledPart":
        """One sampling batch on the method's solver; its images go to the reward workers at once."""
        res = sample(self._velocity_fn(spec, part.cond), x, sig, spec.solver, noise_level=spec.noise_level,
                     generator=g, sde_window=spec.sde_window, keep_trajectory=spec.keep_trajectory,
                     latent_dtype=self._latent_dtype(), keep_means=spec.keep_means, sa_window=spec.sa_window)
        part.futures.append(self.rewards.submit(self.policy.decode(res.x0), part.prompts, part.metadata))
        part.x0 = res.x0
        if spec.keep_trajectory:
            part.latents, part.next_latents = torch.stack(res.latents, 1), torch.stack(res.next_latents, 1)
            part.log_probs, part.stochastic = torch.stack(res.log_probs, 1), res.stochastic
        if spec.keep_means:
            part.means = torch.stack(res.means, 1)
        return part

    def _sample_branches(self, spec, sig, x, g, part: "SampledPart") -> "SampledPart":
        """One sampling batch of TempFlow's branching rollout, returned with one row per branch (row r of trunk sample
        r // K); each branch point's images go to the reward workers as soon as they are ready."""
        k = spec.branches
        rows = SampledPart([p for p in part.prompts for _ in range(k)], [m for m in part.metadata for _ in range(k)],
                           (part.cond[0].repeat_interleave(k, 0), part.cond[1].repeat_interleave(k, 0)),
                           [i for i in part.ids for _ in range(k)])

        def score(i: int, x0: torch.Tensor) -> None:
            rows.futures.append(self.rewards.submit(self.policy.decode(x0), rows.prompts, rows.metadata))

        res = sample_branches(self._velocity_fn(spec, part.cond), x, sig, k, noise_level=spec.noise_level, generator=g,
                              latent_dtype=self._latent_dtype(), branch_points=spec.branch_points, on_branch=score)
        rows.x0 = res.x0[-1]  # the finals of the last branch point, the nearest to the trunk's own image
        rows.latents, rows.next_latents = res.latents.repeat_interleave(k, 0), res.next_latents
        rows.log_probs, rows.stochastic = res.log_probs, [True] * res.log_probs.shape[1]
        return rows

    def advantages(self, batch: RolloutBatch) -> dict[str, float]:
        """The method's advantages over the gathered epoch (all ranks; by default per prompt group); keep this rank's
        slice."""
        local = batch.rewards["avg"].double()
        gathered = gather_objects((batch.prompts, local, batch.sample_ids))
        all_prompts = [p for g in gathered for p in g[0]]
        all_rewards = torch.cat([g[1] for g in gathered])
        adv = self.method.advantages(all_rewards, all_prompts, torch.cat([g[2] for g in gathered]))
        start = sum(len(g[0]) for g in gathered[: self.rank])
        batch.advantages = adv[start:start + len(batch)].float()
        stats = {"reward/avg_mean": float(all_rewards.mean()), "reward/avg_std": float(all_rewards.std(unbiased=False)),
                 "adv_abs_mean": float(adv.abs().mean())}
        for k, v in batch.rewards.items():
            if k != "avg":
                vals = torch.cat([t.double() for t in gather_objects(v)])
                stats[f"reward/{k}_mean"] = float(vals.mean())
        return stats

    # ------------------------------------------------------------------------------------------------ loop
    def _save(self, epoch_next: int) -> None:
        if self.rank != 0:
            return
        checkpoint.save(self.run_dir, {"method": self.method.state_dict(), "state": {**self.state, "epoch": epoch_next},
                                       "config": asdict(self.cfg)})

    def _resume(self) -> int:
        saved = checkpoint.load(self.run_dir) if self.method.trains else None
        if saved is None:
            return 0
        self.method.load_state_dict(saved["method"])
        self.state = {**self.state, **saved["state"]}  # checkpoints older than a state key keep its zero
        return self.state["epoch"]

    def _budget_left(self) -> bool:
        if self.cfg.budget_wall_s and self.state["wall_s"] >= self.cfg.budget_wall_s:
            return False
        if self.cfg.budget_gpu_hours and self._gpu_hours() >= self.cfg.budget_gpu_hours:
            return False
        if self.cfg.budget_cpu_s and self.state["cpu_s"] >= self.cfg.budget_cpu_s:
            return False
        return True

    def _clock(self) -> float:
        """The training clock that the budget and a time-based evaluation cadence follow."""
        return self.state["cpu_s"] if self.cfg.budget_cpu_s else self.state["wall_s"]

    def _budget_s(self) -> float:
        """The budget in seconds of :meth:`_clock` (0 without one): the CPU budget when set, else the tighter of the
        wall-clock budget and the device-hour budget turned into wall-clock seconds."""
        if self.cfg.budget_cpu_s:
            return self.cfg.budget_cpu_s
        limits = (self.cfg.budget_wall_s, self.cfg.budget_gpu_hours * 3600 / self.devices)
        return min((limit for limit in limits if limit > 0), default=0.0)

    def _progress(self, completed: int) -> RunBar:
        """The main bar: seconds of the budget when the run has one, else epochs (rank 0 only draws)."""
        return RunBar(self.cfg.method, epochs=self.cfg.epochs, budget_s=self._budget_s(),
                      clock_name="cpu" if self.cfg.budget_cpu_s else "wall", clock=self._clock(), epoch=completed,
                      enabled=self.rank == 0)

    def _eval_due(self, completed: int, clock_before: float) -> bool:
        if self.cfg.eval_every_s:
            return int(self._clock() // self.cfg.eval_every_s) > int(clock_before // self.cfg.eval_every_s)
        return bool(self.cfg.eval_every) and completed % self.cfg.eval_every == 0

    def _gpu_hours(self) -> float:
        """Device-hours: training wall-clock x devices (evaluation excluded)."""
        return self.state["wall_s"] * self.devices / 3600

    def _cum(self) -> dict[str, float]:
        return {"cum/wall_s": self.state["wall_s"], "cum/cpu_s": self.state["cpu_s"],
                "cum/gpu_hours": self._gpu_hours(), "cum/images": self.state["images"],
                "cum/train_forward": self.state["forward"], "cum/train_backward": self.state["backward"],
                "cum/eval_s": self.state["eval_s"]}

    def run(self) -> dict:
        """Train until ``epochs`` or the budget. Record row k holds the state after k training epochs: row 0 is the
        initial evaluation, row k >= 1 the metrics of training epoch k - 1 plus any evaluation made right after it,
        so every key of a row shares that row's cumulative wall-clock and device-hours."""
        cfg = self.cfg
        if not self.method.trains:
            values = self.evaluate(0)
            self._log(0, {**values, **self._cum()})
            self._finish()
            return {"run_id": self.run_id, "final": values, "epochs": 0, "wall_s": 0.0}
        completed = self._resume()
        # only rank 0 reads the records; the others follow it so every rank evaluates and stops at the same epochs
        last_logged = from_rank0(self.recorder.last_epoch() if self.recorder else -1)
        final: dict[str, float] = {}
        evaluates = bool(cfg.eval_every or cfg.eval_every_s)
        if completed == 0 and last_logged < 0 and evaluates:
            final = self.evaluate(0)
            self.state["eval_s"] += final["time/eval_s"]
            self._log(0, {**final, **self._cum()})
        bar = self._progress(completed)
        bar.advance(self._clock(), completed, headline_eval(final))
        while completed < cfg.epochs and self._budget_left():
            epoch = completed
            if self.schedule is not None:
                self._apply_stage(epoch)
            clock_before = self._clock()
            t0, c0 = time.perf_counter(), time.process_time()
            batch, roll = self.rollout(epoch)
            stats = self.advantages(batch)
            t1 = time.perf_counter()
            metrics = self.method.train_epoch(batch, epoch, torch.Generator().manual_seed(
                derive_seed(cfg.seed, epoch, self.rank, 1)))
            t_train = time.perf_counter() - t1
            # the slowest rank's time: one agreed number, so every rank stops at the same epoch of the budget
            self.state["wall_s"] += max(gather_objects(time.perf_counter() - t0))
            self.state["cpu_s"] += max(gather_objects(time.process_time() - c0))
            self.state["images"] += roll.pop("images")
            self.state["forward"] += metrics.get("count/train_forward", 0) * self.world_size
            self.state["backward"] += metrics.get("count/train_backward", 0) * self.world_size
            completed = epoch + 1
            self.state["epoch"] = completed
            fresh = completed > last_logged  # after a resume, rows already on disk are recomputed, not re-logged
            values = {**roll, **stats, **{f"train/{k}": v for k, v in metrics.items()}, "time/train_s": t_train,
                      "train/stage": self.stage}
            done = completed >= cfg.epochs or not self._budget_left()
            if evaluates and fresh and (done or self._eval_due(completed, clock_before)):
                values.update(self.evaluate(completed))
                self.state["eval_s"] += values["time/eval_s"]
            values.update(self._cum())
            if fresh:
                self._log(completed, values)
            if completed % cfg.checkpoint_every == 0 and not done:
                self._save(completed)  # the last one is written once, after the loop
            score = headline_eval(values)
            bar.advance(self._clock(), completed, score)
            if self.rank == 0:
                ev = f"eval {score:.3f} | " if score is not None else ""
                # loss .4g: AWM's loss is ~1e-6
                tqdm.write(f"epoch {completed:4d} | reward {stats['reward/avg_mean']:.4f} | {ev}"
                           f"loss {metrics.get('loss', float('nan')):.4g} | {bar.text(self._clock())}")
            final = values
        bar.close()
        self._save(completed)
        self._finish()
        return {"run_id": self.run_id, "final": final, "epochs": completed, "wall_s": self.state["wall_s"]}

    def _finish(self) -> None:
        """End a run that completed its epochs or budget: close it, then compact its records into one file (rank 0;
        a crashed run keeps its per-epoch parts, and a resumed one appends new parts after the compacted file)."""
        self.close()
        if self.rank == 0:
            compact_run(self.run_dir)

    def close(self) -> None:
        if self.rewards is not None:
            self.rewards.close()
        if self.recorder is not None:
            self.recorder.flush()
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0:
            (self.run_dir / "summary.json").write_text(json.dumps({"run_id": self.run_id, **self._cum()}, indent=2))
