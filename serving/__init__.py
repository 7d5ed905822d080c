"""Serving: signatures, TF Serving configs, the gRPC client, the knowledge store, a local server."""
