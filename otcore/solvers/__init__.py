"""Solvers: the Sinkhorn algorithm and its output, barycenters (fixed and free support)
and the Sinkhorn divergence; the first three share one monitored fixed-point loop
(:mod:`otcore.solvers.loop`)."""
