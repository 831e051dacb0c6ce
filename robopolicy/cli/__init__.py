"""Console entry points: parse arguments or hydra configs, build objects, call the library."""
