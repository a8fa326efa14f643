"""Entry points: the demo job and (with the generation issue) cluster launch specs."""
