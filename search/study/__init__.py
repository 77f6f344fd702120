"""The study definition: the study file's schema and reader, the search space, samplers, pruners, objectives,
known and baseline points, and the Optuna storage the study lives in."""
