"""Trainers: behaviour cloning now; reward models and RL fine-tuning build on it."""
