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
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from bench import checkpoint
from bench.config import RunConfig
from bench.eval import EvalConfig, evaluate
from bench.records import RunRecorder, make_run_id
from bench.worlds import load_world
from methods import registry
from methods.base import RolloutBatch, derive_seed, sample_generators
from rewards import AsyncRewards, build_reward
from rollout import lora
from rollout.advantages import group_advantages
from rollout.prompts import GroupedSampler
from rollout.samplers import sample
from rollout.schedule import sigmas_from_scheduler


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
                    "device": str(self.device), "precision": "fp16-autocast" if self.policy.options.autocast_dtype
                    else "fp32", "reward_spec": self.reward_spec}
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
            result = evaluate(self.policy, self.test_set, self.world.eval_reward(), self.eval_cfg,
                              progress=self.rank == 0)
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
        sig = sigmas_from_scheduler(self.policy.scheduler, spec.num_steps)
        shape = self.policy.latent_shape(self.resolution, self.resolution)
        parts, futures = [], []
        t0 = time.perf_counter()
        adapter = lora.use_adapter(self.policy.transformer, spec.adapter) if spec.adapter != lora.TRAINABLE \
            else contextlib.nullcontext()
        latent_dtype = torch.float16 if self.device.type == "cuda" else None
        with adapter, torch.no_grad():
            shard_start = self.rank * self.sampler.batches_per_epoch * self.sampler.batch_size
            batches = self.sampler.batches(epoch)
            for b, idx in enumerate(tqdm(batches, desc=f"rollout {epoch}", leave=False, disable=self.rank != 0,
                                         dynamic_ncols=True)):
                prompts = [self.train_set.prompts[i] for i in idx]
                metadata = [self.train_set.metadata[i] for i in idx]
                cond = self.policy.encode(prompts)
                ids = list(range(shard_start + b * len(idx), shard_start + (b + 1) * len(idx)))
                g = sample_generators(self.cfg.seed, epoch, ids, salt=0)
                x = torch.stack([torch.randn(shape, generator=gi) for gi in g]).to(self.device)

                def velocity(x_, s, cond=cond):
                    return self.policy.velocity(x_, s, cond, guidance=spec.guidance,
                                                integer_timestep=spec.integer_timestep)

                res = sample(velocity, x, sig, spec.solver, noise_level=spec.noise_level, generator=g,
                             sde_window=spec.sde_window, keep_trajectory=spec.keep_trajectory,
                             latent_dtype=latent_dtype)
                images = self.policy.decode(res.x0)
                futures.append(self.rewards.submit(images, prompts, metadata))
                parts.append((prompts, metadata, cond, res, ids))
        t_sample = time.perf_counter() - t0
        scores = [self.rewards.result(f) for f in tqdm(futures, desc="reward", leave=False, disable=self.rank != 0)]
        t_reward_wait = time.perf_counter() - t0 - t_sample
        cat = lambda xs: torch.cat(xs).cpu()  # noqa: E731
        batch = RolloutBatch(
            prompts=[p for part in parts for p in part[0]], metadata=[m for part in parts for m in part[1]],
            embeds=cat([part[2][0] for part in parts]), pooled=cat([part[2][1] for part in parts]),
            x0=cat([part[3].x0 for part in parts]), sigmas=sig,
            sample_ids=torch.tensor([i for part in parts for i in part[4]]))
        if spec.keep_trajectory:
            batch.latents = cat([torch.stack(part[3].latents, 1) for part in parts])
            batch.next_latents = cat([torch.stack(part[3].next_latents, 1) for part in parts])
            batch.log_probs = cat([torch.stack(part[3].log_probs, 1) for part in parts])
            batch.stochastic = parts[0][3].stochastic
        batch.rewards = {k: torch.cat([s[k] for s in scores]) for k in scores[0]}
        cfg_mult = 2 if spec.guidance != 1.0 else 1
        n_images = len(batch) * self.world_size
        counts = {"count/rollout_forward": n_images * spec.num_steps * cfg_mult}
        return batch, {"time/rollout_s": t_sample, "time/reward_wait_s": t_reward_wait, **counts,
                       "images": n_images}

    def advantages(self, batch: RolloutBatch) -> dict[str, float]:
        """Group advantages over the gathered epoch (all ranks), keyed by prompt text; keep this rank's slice."""
        local = batch.rewards["avg"].double()
        gathered = gather_objects((batch.prompts, local))
        all_prompts = [p for g in gathered for p in g[0]]
        all_rewards = torch.cat([g[1] for g in gathered])
        adv = group_advantages(all_rewards, all_prompts, global_std=True)
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

    def _eval_due(self, completed: int, clock_before: float) -> bool:
        if self.cfg.eval_every_s:
            return int(self._clock() // self.cfg.eval_every_s) > int(clock_before // self.cfg.eval_every_s)
        return bool(self.cfg.eval_every) and completed % self.cfg.eval_every == 0

    def _gpu_hours(self) -> float:
        """Device-hours: training wall-clock x devices (evaluation excluded)."""
        return self.state["wall_s"] * self.devices / 3600

    def _cum(self) -> dict[str, float]:
        return {"cum/wall_s": self.state["wall_s"], "cum/cpu_s": self.state["cpu_s"], "cum/gpu_hours": self._gpu_hours(),
                "cum/images": self.state["images"], "cum/train_forward": self.state["forward"],
                "cum/train_backward": self.state["backward"], "cum/eval_s": self.state["eval_s"]}

    def run(self) -> dict:
        """Train until ``epochs`` or the budget. Record row k holds the state after k training epochs: row 0 is the
        initial evaluation, row k >= 1 the metrics of training epoch k - 1 plus any evaluation made right after it,
        so every key of a row shares that row's cumulative wall-clock and device-hours."""
        cfg = self.cfg
        if not self.method.trains:
            values = self.evaluate(0)
            self._log(0, {**values, **self._cum()})
            self.close()
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
        bar = tqdm(total=cfg.epochs, initial=completed, desc=cfg.method, disable=self.rank != 0, dynamic_ncols=True)
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
            bar.update(1)
            if self.rank == 0:
                ev = f"eval {values['eval/strict_accuracy']:.3f} | " if "eval/strict_accuracy" in values else ""
                tqdm.write(f"epoch {epoch:4d} | reward {stats['reward/avg_mean']:.4f} | {ev}"
                           f"loss {metrics.get('loss', float('nan')):.4f} | train wall {self.state['wall_s']:.0f}s")
            final = values
        bar.close()
        self._save(completed)
        self.close()
        return {"run_id": self.run_id, "final": final, "epochs": completed, "wall_s": self.state["wall_s"]}

    def close(self) -> None:
        if self.rewards is not None:
            self.rewards.close()
        if self.recorder is not None:
            self.recorder.flush()
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0:
            (self.run_dir / "summary.json").write_text(json.dumps({"run_id": self.run_id, **self._cum()}, indent=2))
