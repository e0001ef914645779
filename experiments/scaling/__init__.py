"""The compute-optimal scaling study: run the sweep, fit the law, plot it."""
