"""rewardkit-code: sandboxed code-execution rewards for rewardkit."""

__version__ = "0.1.0"
