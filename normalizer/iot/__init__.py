"""IoT semantics: device registry, the TALQ-style fault model and fault episodes."""
