"""Manifests, audio and image loading, and length-bucketed batching."""
