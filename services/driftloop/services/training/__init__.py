"""Training: turns drift and manual requests into runs on point-in-time data, and reports each run."""
