"""The shared rollout core: models, LoRA adapters, samplers, prompt sets, advantages. Methods differ only where the
papers differ."""
