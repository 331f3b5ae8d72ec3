"""Training one model: noise (augmentation), sampling, losses, optimisers, the epoch loop and resumable trainer.

Touches no file but the model's own round folder (checkpoint.pt, history.csv, model.pt).
"""
