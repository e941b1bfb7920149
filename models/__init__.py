"""Models: the Hyena operator, the Hyena LM, a same-size GPT baseline, and the Lightning tasks
that train them."""

from .gpt import GPTLM, GPTConfig
from .hub import from_pretrained
from .hyena import HyenaOperator
from .lm import HyenaConfig, HyenaLM

__all__ = ["GPTConfig", "GPTLM", "HyenaConfig", "HyenaLM", "HyenaOperator", "from_pretrained"]
