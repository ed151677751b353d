"""The application: the DIM teacher, data, losses, metrics, training and inference."""
from .model import DIM, dim, default_widths, TAP_MODULES
from .scopes import PAPER_SCOPES

__all__ = ["DIM", "dim", "default_widths", "TAP_MODULES", "PAPER_SCOPES"]
