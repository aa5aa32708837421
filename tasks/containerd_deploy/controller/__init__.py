"""What runs on the controller itself: the artifact cache and a release file's published digest
(cache.py), and an operator's restart hook (hooks.py)."""
