"""Developer tools shared by the test suites, the benchmarks and the container test."""
