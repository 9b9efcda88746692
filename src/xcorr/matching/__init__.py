"""Template matching: OpenCV's six scores on one correlation numerator and window statistics,
exact on dark and flat windows, and peak finding."""
