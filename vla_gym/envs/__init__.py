"""Gymnasium environments: tabletop manipulation and navigation with language."""
