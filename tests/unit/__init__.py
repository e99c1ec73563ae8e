"""Unit tests: library functions called in-process (a few Lightning steps on a tiny model at most); no
process of ours, no whole run. The rule is in docs/architecture.md (Tests)."""
