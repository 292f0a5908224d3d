"""The chaos convergence checker (`multiactive check`): faults, kills, and a model of
what must result."""
