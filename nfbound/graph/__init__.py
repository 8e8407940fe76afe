"""Forward and reverse graphs of primitives, evaluated on the runtime, spec and bound paths;
per-node reports; training with certified parameter bounds."""
from ..bounds.ctx import ctx_add, ctx_add_bound
from .forward import ForwardResult, Graph, Node, Value, load_ops
from .report import format_table
from .reverse import BackwardResult
from .train import SGD, AdamW, Momentum, StepResult, TrainResult, train

__all__ = ["Graph", "Node", "Value", "ForwardResult", "BackwardResult", "ctx_add",
           "ctx_add_bound", "format_table", "load_ops", "SGD", "Momentum", "AdamW", "train",
           "StepResult", "TrainResult"]
