"""Data maps, preprocessing and (later) the QSL sample arena."""
