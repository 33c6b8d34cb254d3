"""Thin ComfyUI V3 nodes: schema and hand-off, no tensor math."""
