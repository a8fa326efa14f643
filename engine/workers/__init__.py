"""The worker kit every model job uses (generation, campaign embed and prefill, the
detector's embeddings, training data): decoding images in CPU tasks (`decode`), a model
worker that loads SAM once per actor and gives the predictor or the automatic generator as
asked, with its busy time accounted once (`model`), and one way to start, check, feed and
stop a pool of such actors on Ray (`pool`)."""
