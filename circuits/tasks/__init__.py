"""Tasks for circuit discovery: IOI, greater-than and induction, each a ``Task`` of paired prompts."""

from circuits.tasks import greater_than, induction, ioi
from circuits.tasks.task import MetricFn, Task, logit_diff

__all__ = ["MetricFn", "Task", "greater_than", "induction", "ioi", "logit_diff"]
