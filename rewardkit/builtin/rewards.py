"""rewardkit's own rewards: ``exact_match`` (rule-based) and ``reward_model`` (a learned sequence classifier).
The real math and code rewards live in their own plugins (plugins/rewardkit-math, plugins/rewardkit-code)."""

from __future__ import annotations

import math

from rewardkit.completions import completion_text
from rewardkit.reward_scoring import pair_texts, score_texts


class ExactMatch:
    """1.0 when the completion's answer equals the gold column exactly, else 0.0.

    The answer is the completion up to the first newline (``first_line=True``), stripped of whitespace.
    With ``partial_credit=p`` (0 < p < 1) a wrong answer earns ``p`` times the share of characters that match
    the gold answer aligned from the right (the units digit with the units digit), over the longer of the two:
    a denser signal for digit-by-digit tasks, still strictly below an exact answer's 1.0.
    Never returns ``None``: nothing here can fail to judge. ``extract_answer`` gives held-out maj@k the answer it
    compares (hookspecs: the answer a completion gives).
    """

    score_range = (0.0, 1.0)  # every score lies here (validation checks early_stop.target against it)

    def __init__(self, column: str = "answer", first_line: bool = True, strip: bool = True,
                 partial_credit: float = 0.0):
        if not 0.0 <= partial_credit < 1.0:
            raise ValueError(f"partial_credit must be in [0, 1), got {partial_credit}")
        self.column = column
        self.first_line = first_line
        self.strip = strip
        self.partial_credit = partial_credit
        self.__name__ = "exact_match"

    def _score(self, pred: str, gold: str) -> float:
        if pred == gold:
            return 1.0
        if not self.partial_credit or not pred:
            return 0.0
        same = sum(a == b for a, b in zip(reversed(pred), reversed(gold)))
        return self.partial_credit * same / max(len(pred), len(gold))

    def _normalize(self, text: str) -> str:
        if self.first_line:
            text = text.split("\n", 1)[0]
        return text.strip() if self.strip else text

    def extract_answer(self, completion: str) -> str | None:
        """The answer scored: the first line (``first_line``), stripped (``strip``); None when that is empty."""
        return self._normalize(completion) or None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        gold = kwargs[self.column]
        return [self._score(self._normalize(completion_text(c)), str(g).strip())
                for c, g in zip(completions, gold, strict=True)]


def exact_match_columns(params: dict) -> list[str]:
    return [params.get("column", "answer")]


# ---------------------------------------------------------------- reward_model
# The ``reward_model`` reward: scores completions with a learned sequence-classification model.
#
# Usable wherever a rule-based reward is (GRPO, PPO, next to other rewards). Cheap to build: the model loads on
# the first call, so a recipe may point ``path`` at a model an earlier stage has not trained yet; write
# ``path: "{output_dir}/rm/model"`` and rewardkit substitutes the recipe's ``output_dir`` when it loads the recipe.
#
# The text scored is the text the reward model was trained on by ``trainer: reward_model`` (TRL's
# ``RewardTrainer``; rewardkit.reward_scoring, shared with that trainer's held-out accuracy).

NORMALIZE = ("none", "batch", "running")


class RewardModel:
    """Reward factory: ``reward_model`` with params

    - ``path``: directory of an ``AutoModelForSequenceClassification`` with one output (and its tokenizer);
    - ``batch_size``: completions scored per forward pass (default 32);
    - ``device``: "cpu", "cuda", ... (default: cuda when available);
    - ``max_length``: tokens kept per text, from the end (default 512);
    - ``normalize``: "none" (raw score), "batch" (z-score within each call), "running" (z-score with running
      mean/std over every call so far);
    - ``offset``, ``scale``: applied after normalization, ``(s - offset) / scale`` (centering on a known mean).
    """

    def __init__(self, path: str, batch_size: int = 32, device: str | None = None, max_length: int = 512,
                 normalize: str = "none", offset: float = 0.0, scale: float = 1.0):
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size}, {max_length}")
        if scale == 0:
            raise ValueError("scale must not be 0")
        self.path, self.batch_size, self.device, self.max_length = path, batch_size, device, max_length
        self.normalize, self.offset, self.scale = normalize, float(offset), float(scale)
        self.model = self.tokenizer = None
        self._n, self._mean, self._m2 = 0, 0.0, 0.0  # running statistics (Welford)
        self.__name__ = "reward_model"

    def load(self):
        """Load model and tokenizer (once)."""
        if self.model is None:
            import os  # noqa: PLC0415

            if not os.path.isdir(self.path):
                raise FileNotFoundError(f"reward_model: no model directory at {self.path!r}; train one with "
                                        f"trainer: reward_model, or fix params.path")
            import torch  # noqa: PLC0415
            from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
            if self.model.config.num_labels != 1:
                raise ValueError(f"reward_model: {self.path} has num_labels={self.model.config.num_labels}; a "
                                 f"reward model has 1 output")
            if self.model.config.pad_token_id is None:
                self.model.config.pad_token_id = self.tokenizer.pad_token_id
            self.model.to(device).eval()
        return self.model, self.tokenizer

    def _normalize(self, raw: list[float]) -> list[float]:
        if self.normalize == "batch" and len(raw) > 1:
            mean = sum(raw) / len(raw)
            std = math.sqrt(sum((x - mean) ** 2 for x in raw) / (len(raw) - 1))
            raw = [(x - mean) / (std + 1e-6) for x in raw]
        elif self.normalize == "running":
            for x in raw:
                self._n += 1
                delta = x - self._mean
                self._mean += delta / self._n
                self._m2 += delta * (x - self._mean)
            std = math.sqrt(self._m2 / (self._n - 1)) if self._n > 1 else 1.0
            raw = [(x - self._mean) / (std + 1e-6) for x in raw]
        return [(x - self.offset) / self.scale for x in raw]

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        model, tokenizer = self.load()
        texts = pair_texts(tokenizer, prompts, completions)
        return self._normalize(score_texts(model, tokenizer, texts, self.batch_size, self.max_length))
