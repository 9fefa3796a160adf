"""One rank of the distributed-equivalence test: train NFT on the tiny model, save the final LoRA weights.

    torchrun --nproc_per_node 2 -m tests.dist_worker OUT_DIR SAVE_PATH rollout_batch_size=4
    python -m tests.dist_worker OUT_DIR SAVE_PATH rollout_batch_size=8          # the 1-process reference

Extra ``key=value`` arguments are config overrides applied after tests.tiny's; ``method=NAME`` (default nft)
picks the method. Rank 0 saves the trainable (``default``) adapter and the EMA; a separate module (not the test
itself) because torchrun needs an entry point.
"""
from __future__ import annotations

import os
import sys

import torch


def main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # two ranks share two cores; also keeps the CPU kernels' reduction order fixed
    from bench.distributed import init_distributed, shutdown_distributed
    from bench.trainer import Trainer
    from tests.tiny import tiny_config, tiny_policy

    out, save_path, *extra = argv
    method = next((a.split("=", 1)[1] for a in extra if a.startswith("method=")), "nft")
    extra = [a for a in extra if not a.startswith("method=")]
    _, rank, _ = init_distributed()
    cfg = tiny_config(method, out, "run_id=dist", "nft.train_batch_size=4", *extra, epochs=2)
    trainer = Trainer(cfg, policy=tiny_policy())
    trainer.run()
    if rank == 0:
        state = trainer.method.state_dict()
        torch.save({"default": state["default"], "ema": state["ema"]}, save_path)
    shutdown_distributed()


def dgpo_split_group(rank: int, world: int, init_file: str, inputs: dict, save_dir: str) -> None:
    """A ``torch.multiprocessing`` worker (gloo): ``dgpo_loss`` on this rank's rows ``inputs["rows"][rank]`` with the
    group sums all-reduced; saves the weights, the group sums and the gradient of the loss w.r.t. its ``v_theta``."""
    import torch.distributed as dist

    from methods.dgpo import all_reduce_sum, dgpo_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = inputs["rows"][rank]
    v_theta = inputs["v_theta"][rows].clone().requires_grad_(True)
    loss, info = dgpo_loss(inputs["target"][rows], v_theta, inputs["v_ref"][rows], inputs["v_old"][rows],
                           inputs["adv"][rows], inputs["group_ids"][rows], inputs["group_size"],
                           num_groups=inputs["num_groups"], reduce=all_reduce_sum, **inputs["kwargs"])
    loss.backward()
    torch.save({"weight": info["weight"], "group_sums": info["group_sums"], "grad": v_theta.grad},
               f"{save_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
