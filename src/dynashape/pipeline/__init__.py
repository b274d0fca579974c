"""The steps of the pipeline, in order: check (report), passes and fix (rewrite and prove),
verify (run against a reference), the differential export, and doctor (all of them)."""
