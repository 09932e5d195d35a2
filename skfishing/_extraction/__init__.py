"""DeepFisherTransformer and its input: images decoded and cut into batches."""
