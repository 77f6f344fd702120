"""The `mergesearch` command line: `main` parses and dispatches, `study` runs and resumes studies, `promote`
promotes, `demo` is `make demo`'s end-to-end run."""
