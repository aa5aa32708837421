"""Benchmarks of the deploy on local VMs (`make bench` / `python -m bench`): first converge
against a hand-written shell script, the no-op rerun, fan-out, upstream bytes with the
controller cache, and the controller's peak memory. Figures go to docs/benchmarks.md."""
