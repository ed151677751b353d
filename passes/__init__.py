"""FX passes of the DCP pruning compiler; they work on any traceable model.

Imports neither ``compiler`` nor ``matting``.
"""
from .errors import DCPError
from .trace import trace, propagate_shapes, symbolic_trace, as_tuple
from .count import count, layer_costs, LayerCost

__all__ = ["DCPError", "trace", "propagate_shapes", "symbolic_trace", "as_tuple", "count", "layer_costs", "LayerCost"]
from .channels import channel_groups, analyse, build_groups, Group, Member

__all__ += ["channel_groups", "analyse", "build_groups", "Group", "Member"]
from .lower_unpool import lower_unpool, dense_max_unpool2d
from .fold_bn import fold_bn

__all__ += ["lower_unpool", "dense_max_unpool2d", "fold_bn"]
from .registry import OpEntry, register_op, lookup

__all__ += ["OpEntry", "register_op", "lookup"]
