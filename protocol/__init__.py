"""The Runware task protocol for background removal: pure msgspec structs and codecs, no I/O."""
