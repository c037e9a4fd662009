"""Inference core of satseg: tiled ONNX segmentation with no Qt or QGIS import.

Runs in QGIS (through ``satseg_plugin.ui``), from the command line
(``python -m satseg_plugin.inference``) and in tests without a GUI.
"""
