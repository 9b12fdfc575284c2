"""The nightly run: which payments and statement lines make a day (collection), matching and
classification, the runs and their re-runs, and the exception cases finance staff work."""
