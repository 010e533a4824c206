"""Private helpers with no otcore imports: array namespace, dtype and device (``xp``),
argument checks (``checks``), nested containers (``tree``) and progress bars (``progress``).
"""
