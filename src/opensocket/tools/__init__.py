"""Troubleshooting tools as library functions: scan, ping, stat and bench (the CLI wraps them)."""
