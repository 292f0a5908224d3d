"""Run sites and the servers they use on this machine: a local cluster of real site
processes, Redis and PostgreSQL servers on free ports. Used by `multiactive demo`, `multiactive
check`, the benchmarks and the tests."""
