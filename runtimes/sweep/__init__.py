"""Sweeps: train every point of a sweep file (local processes or Slurm, through submitit) and
report the answer (results table, error vs cardinality, training curves, EDFs)."""
