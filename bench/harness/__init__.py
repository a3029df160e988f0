"""What every benchmark scenario shares: paths and wire constants (`common`),
child processes (`children`), /proc readings (`procfs`), single calls and
readiness checks (`calls`), test certificates (`tlsfiles`), the servers under
test (`servers`), the load-generator runs and their budget (`runner`) and the
table (`report`). The scenarios themselves live in `scenarios/`; `run.py` is
the entry point."""
