"""The run engine: the coordinator's loop, the ledger the store thread owns, the dispatch policy, the Ray worker
pool and its workers, the rung gate, progress and the run's statistics (threads and owners: docs/engine.md)."""
