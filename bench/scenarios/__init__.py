"""The benchmark's scenarios, one module each. Every module has measure(...),
which runs its load-generator runs and stores their results in the Runner's
`raw`, and rows(...), which turns those into table rows (with targets).
bench/README.md describes each scenario; run.py runs them in order."""
