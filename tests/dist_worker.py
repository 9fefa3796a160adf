"""One rank of the distributed-equivalence test: train NFT on the tiny model, save the final LoRA weights.

    torchrun --nproc_per_node 2 -m tests.dist_worker OUT_DIR SAVE_PATH rollout_batch_size=4
    python -m tests.dist_worker OUT_DIR SAVE_PATH rollout_batch_size=8          # the 1-process reference

Extra ``key=value`` arguments are config overrides applied after tests.tiny's. Rank 0 saves the trainable
(``default``) adapter and the EMA; a separate module (not the test itself) because torchrun needs an entry point.
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
    _, rank, _ = init_distributed()
    cfg = tiny_config("nft", out, "run_id=dist", "nft.train_batch_size=4", *extra, epochs=2)
    trainer = Trainer(cfg, policy=tiny_policy())
    trainer.run()
    if rank == 0:
        state = trainer.method.state_dict()
        torch.save({"default": state["default"], "ema": state["ema"]}, save_path)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
