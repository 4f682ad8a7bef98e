"""Benchmarks of beamside's frame reductions against the machine and the usual baselines.

``python -m benchmarks`` writes (once, then reuses) an Eiger-like bitshuffle/LZ4
frame stack, measures what the machine can do (page-cache reads, decoding,
reductions), the baselines a user would otherwise write (an h5py frame loop,
Dask over h5py, xarray with h5netcdf, a plain pyFAI loop) and analysis_lib's
own reductions, each in a fresh process, interleaved over several rounds, and
prints medians with ratios and the targets they are held to.

Benchmarks are not tests: they print numbers and never fail on a timing.
"""
