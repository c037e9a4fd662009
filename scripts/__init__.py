"""Project scripts: plugin packaging and the end-to-end demo."""
