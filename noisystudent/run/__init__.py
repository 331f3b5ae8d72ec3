"""The k-fold Noisy Student run: its folder, the fold/round orchestration, pseudo-labels and results."""
