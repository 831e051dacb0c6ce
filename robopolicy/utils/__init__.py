"""Small helpers shared across the package (video files, plotting)."""
