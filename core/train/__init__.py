"""Training: the trainer, loss, packing, checkpoints."""
