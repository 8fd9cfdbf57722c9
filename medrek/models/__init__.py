"""Model loading, the knowledge encoder and the prompt encoders."""
