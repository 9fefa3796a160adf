"""Interchangeable RL methods (DiffusionNFT, FlowGRPO and variants, CFG baselines); see methods.registry."""
