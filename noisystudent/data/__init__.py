"""Images in: data-set layouts into one manifest, decoding and preprocessing, the image cache, folds, demo data."""
