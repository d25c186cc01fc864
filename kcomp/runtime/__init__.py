"""Where the work runs: device and precision, RNG state, process groups (DDP) and the torchrun launchers."""
