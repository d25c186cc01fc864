"""Post-processing of model outputs: blending, stacking and other steps between predictions and a submission."""
