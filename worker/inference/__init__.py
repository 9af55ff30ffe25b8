"""The inference worker: model specs, Triton client adapter, preprocessing, batching."""
