"""Serving: text generation and the Serve deployment behind serve_apps/."""
