"""Fine-tuning: the training loop, checkpoints, and the token streams it reads."""
