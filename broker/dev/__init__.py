"""The development stack (`broker up`) and the benchmarks."""
