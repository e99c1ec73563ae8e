"""Speed, memory and accuracy-per-minute benchmarks (``make bench`` → ``python -m benchmarks.run_all``).

Every figure is a ratio measured side by side in one process run: the two sides alternate
(interleaved repetitions) and the median of the repetitions is reported, so a noisy shared
machine slows both sides alike.
"""
