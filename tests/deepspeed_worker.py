"""One rank of the DeepSpeed-equivalence test: NFT on the tiny model, 2 epochs, saved LoRA and optimizer state.

    torchrun --nproc_per_node 2 -m tests.deepspeed_worker OUT_DIR SAVE_PATH backend=deepspeed zero_stage=2

With ``backend=deepspeed`` the run stops after epoch 1 and a fresh Trainer (fresh policy, method and engine)
resumes it from the checkpoint to epoch 2, so the optimizer state goes through state_dict / load_state_dict.
Rank 0 saves the trainable adapter, the EMA and the optimizer state (torch AdamW layout under both backends).
"""
from __future__ import annotations

import os
import sys

import torch


def main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from bench.distributed import init_distributed, shutdown_distributed
    from bench.trainer import Trainer
    from tests.tiny import tiny_config, tiny_policy

    out, save_path, *extra = argv
    _, rank, _ = init_distributed()
    cfg = None
    for epochs in ((1, 2) if "backend=deepspeed" in extra else (2,)):
        cfg = tiny_config("nft", out, "run_id=ds", "nft.train_batch_size=4", "rollout_batch_size=4", *extra,
                          epochs=epochs)
        trainer = Trainer(cfg, policy=tiny_policy())
        trainer.run()
    if rank == 0:
        state = trainer.method.state_dict()
        torch.save({k: state[k] for k in ("default", "ema", "optimizer", "global_step")}, save_path)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
