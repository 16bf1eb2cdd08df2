"""Training: the single-process DP-SGD loop, its Ray Train wrapper, result files."""

from eqdp_ray.train.loop import TrainState, resolve_device, steps_and_rate, train
from eqdp_ray.train.output import write_result

__all__ = ["TrainState", "resolve_device", "steps_and_rate", "train", "write_result"]
