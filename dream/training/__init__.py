"""Training drafts: data generation, shards, entropy selection, losses, the loop, checkpoints, distribution."""
