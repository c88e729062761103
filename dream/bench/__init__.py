"""The side-by-side benchmark: prompts, the timed loop, the report."""
