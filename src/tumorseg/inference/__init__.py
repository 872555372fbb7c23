"""Inference: what a network's output channels mean (label schemes) and sliding-window inference
over whole volumes with test-time mirroring."""

from tumorseg.inference.sliding_window import MIRROR_AXES, InferenceConfig, mirror_sets, sliding_window_logits

__all__ = ["MIRROR_AXES", "InferenceConfig", "mirror_sets", "sliding_window_logits"]
