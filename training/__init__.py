"""satseg training toolkit: dataset builder, SegNet training, validation, export."""
