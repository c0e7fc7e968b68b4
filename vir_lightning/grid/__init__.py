"""Ablation grids: declarative specs over the CLI configs, run locally or on Ray, resumable."""
