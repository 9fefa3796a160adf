"""SLURM array jobs through submitit."""
