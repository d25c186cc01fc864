"""kcomp's command-line layer: one thin typer module per subcommand; the work happens in `kcomp`."""
