"""MJCF written by this project (robots, arenas); objects are built procedurally in code."""
