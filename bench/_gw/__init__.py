"""The parts of ``bench/gateway_bench.py`` (the entry point): processes, load, measurement, report, profile.

Modules import one another relatively; the package is found because ``bench/`` is the script's directory.
"""
