"""Solvers: the Sinkhorn algorithm and its output, barycenters (fixed and free support)
and the Sinkhorn divergence."""
