"""Video in and out: probe, span selection, decoding (PyAV, upright), H.264 encoding with the
source's audio, still images, and fitting frames to a model's size and back (crop, pad, stretch,
composite). Knows nothing of models, masks or the method."""
