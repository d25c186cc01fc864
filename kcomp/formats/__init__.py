"""Text encodings competitions use for masks and boxes: run-length encoding and PredictionString."""
