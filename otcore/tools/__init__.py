"""Tools built on the solvers: Wasserstein dictionary learning."""
