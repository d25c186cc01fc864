"""The drivers of run directories: `train` writes one, `oof`/`tta` predict from one. Written once, against the
task protocol (`kcomp.tasks.base`)."""
