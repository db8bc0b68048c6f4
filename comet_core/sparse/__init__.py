"""Comet's protocol pieces: predictors inside MPC, the mask reveal, and their sparsity inputs for cost mode."""
