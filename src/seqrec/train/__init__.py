"""Training: batches, losses, the trainer loop and run loading."""
