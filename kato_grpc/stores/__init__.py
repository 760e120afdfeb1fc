"""IO seams: the session store and the pattern store, each a Protocol with implementations."""
