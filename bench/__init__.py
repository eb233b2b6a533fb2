"""`make bench`: the cost of one DreamMotion step against bare U-Net compute, memory and scaling.

Run `python -m bench.run` (or `--quick` for a smoke subset); results go to bench/results/ and the
tables of BENCHMARKS.md are regenerated from every JSON file there.
"""
