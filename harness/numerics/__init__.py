"""The numerics suite's harness: teacher-forced comparison of a port's logits with the
reference, the metrics per position and the versioned thresholds."""
