"""Models: the Hyena operator, the Hyena LM, and the Lightning tasks that train them."""

from .hub import from_pretrained
from .hyena import HyenaOperator
from .lm import HyenaConfig, HyenaLM

__all__ = ["HyenaConfig", "HyenaLM", "HyenaOperator", "from_pretrained"]
