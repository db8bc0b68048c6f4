"""comet_core: the 2PC engine (mpc, comm), models, predictors, Comet's sparse protocols and systems."""
