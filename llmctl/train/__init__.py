"""Training: the shared loop (loop.py), distributed set-up (distributed.py) and the trainers built on them."""
