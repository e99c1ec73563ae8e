"""End-to-end tests: `finetune` processes, whole runs in-process (train, lr-find, advise, the DDP worker)
and the benchmark harness. The rule is in docs/architecture.md (Tests)."""
