"""Seed ranges the benchmarks share, clear of the training seeds (demos 0 on, grounding scenes
50 000 on, DAgger 70 000 on: ``vla_gym.training.demos``)."""

EVAL_SEED = 100_000  # the benches' unseen evaluation scenes
VALIDATION_SEED = 200_000  # scenes for judging changes to a policy without the bench's own
