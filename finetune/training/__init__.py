"""The top of the library: one ``train()`` for every task, its phases and distributed launch, and the tools built
on training (lr-find, probing and advise, recommendations, sweeps and searches)."""
