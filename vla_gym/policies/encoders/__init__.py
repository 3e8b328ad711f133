"""Vision and language encoders (import torch; keep out of ``vla_gym.policies``' import)."""
