"""Scoring text with a sequence-classification reward model, shared by the ``reward_model`` reward (builtin) and
the ``reward_model`` trainer's held-out preference accuracy (trainers/reward_model.py).

The text scored is the text ``trainer: reward_model`` (TRL's ``RewardTrainer``) trains on: ``prompt + completion
+ eos`` for plain prompts, the chat template applied to ``prompt + [assistant completion]`` for conversations.
"""

from __future__ import annotations

from rewardkit.completions import completion_text


def pair_texts(tokenizer, prompts, completions) -> list[str]:
    """The strings a reward model scores, formatted as TRL's RewardTrainer formats training pairs."""
    texts = []
    for prompt, completion in zip(prompts, completions, strict=True):
        if isinstance(prompt, list):  # conversational
            messages = completion if isinstance(completion, list) else [
                {"role": "assistant", "content": str(completion)}]
            texts.append(tokenizer.apply_chat_template(prompt + messages, tokenize=False))
        else:
            text = prompt + completion_text(completion)
            eos = tokenizer.eos_token or ""
            texts.append(text if text.endswith(eos) else text + eos)
    return texts


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 512) -> list[float]:
    """Raw reward-model scores of ``texts``, batched, right-padded (as in training), long texts cut on the left."""
    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # keep the end of a long text: that is where the answer is
    scores: list[float] = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length, padding_side="right", add_special_tokens=True).to(device)
            with torch.no_grad():
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            scores.extend(logits[:, 0].float().tolist())  # (B, 1) -> B scores
    finally:
        tokenizer.truncation_side = side
        model.train(was_training)
    return scores
