"""Training the reconstruction module: data, losses and the resumable trainer (Zero123 stays frozen)."""
