"""What the tests and the benchmark share to drive gpuqueue from outside: free ports, the
PostgreSQL server and migrated databases, the subprocesses they start (children.py, and the
gpuqueue commands on it in commands.py) and waiting on a condition with a deadline. Dev-only:
not part of the installed package; importable from the repository root, as tests/ and bench/
are."""
