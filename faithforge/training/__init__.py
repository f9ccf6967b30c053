"""Training: loading models by plan, the tiny and imported models, SFT, the reference log-prob cache, DPO."""
