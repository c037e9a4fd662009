"""Dataset tools: ``python -m training.dataset build | import-masks | merge``.

``build`` burns OpenStreetMap features into label tiles on the XYZ grid and
fetches the matching imagery; ``import-masks`` cuts datasets with pixel masks
into the same layout; ``merge`` combines datasets. The folder layout is fixed
in docs/design.md.
"""
