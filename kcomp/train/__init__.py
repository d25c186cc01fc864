"""Training loop pieces: losses, batch mixing and the loop itself."""
