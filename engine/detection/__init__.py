"""Stage 2's detector on the engine: its data (boxes from masks, cached SAM embeddings),
training (in-process or Ray Train), evaluation, registry rounds and commands."""
