"""Activation-sparsity predictors (Comet's FFN-neuron and attention-head predictors), in plaintext.

Entry points for the secure side:
- ``checkpoint.load_predictors(path, model_cfg) -> PredictorSet`` (per layer ``ffn[l]``, ``head[l]``:
  ``LowRankPredictor`` with ``w1``, ``w2`` (``nn.Linear``) and scalar ``threshold``; label thresholds
  ``ffn_tau``, ``head_tau``),
- ``profile.load_profile(path_or_model_name, model_cfg) -> SparsityProfile`` (measured densities).
"""
