"""The QGIS side of satseg: dialog, background task, result layers, export, Processing.

Only this package and ``satseg_plugin/plugin.py`` import Qt or QGIS; the work
itself is done by ``satseg_plugin.inference``, imported lazily so the plugin
still loads (and can offer to install onnxruntime) when a dependency is missing.
"""
