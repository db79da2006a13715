"""The engines that turn prompt texts into completions for `python -m rlhf.synth`: batched `model.generate`
(transformers, the default) or vLLM (CUDA). Both sample from a seed given per call, so a batch generated
again (a resumed run, a retried batch) samples the same tokens.

A prompt is text already rendered (chat template and special tokens written out); it is tokenized without
adding special tokens again.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

from rlhf.errors import UserError

BACKENDS = ("transformers", "vllm")


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    stop_ids: list[int] = field(default_factory=list)  # token ids that end a completion (eos if empty)
    stop: list[str] = field(default_factory=list)  # strings that end a completion (cut off, not kept)


class Heartbeat:
    """When the generation in flight last made a token, and whether the loop has given up on it."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.abandoned = False

    def beat(self) -> None:
        self.last = time.monotonic()


def check_backend(name: str) -> None:
    """vLLM needs the package and a CUDA GPU: one line saying which is missing, before any weights load."""
    if name != "vllm":
        return
    import torch

    missing = [
        what
        for what, ok in (
            ("the vllm package", importlib.util.find_spec("vllm") is not None),
            ("a CUDA GPU", torch.cuda.is_available()),
        )
        if not ok
    ]
    if missing:
        raise UserError(
            f"synth.backend=vllm: needs {' and '.join(missing)}, not found here; fix: use "
            "synth.backend=transformers (the default), or pip install vllm on a CUDA machine"
        )


def cut_at_stop(text: str, stop: list[str]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


class Transformers:
    """Batched `model.generate` with left padding, sampling with a torch.Generator seeded per call.

    `generate` has no generator argument, and the process-wide RNG is shared with any abandoned generation
    still running in its thread: the last logits processor samples the token itself from the call's own
    generator and leaves only that token for greedy decoding to pick.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], sampling: Sampling, seed: int, heartbeat: Heartbeat) -> list[str]:
        import torch
        from transformers import (
            LogitsProcessorList,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        tok = self.tokenizer
        # left padding per call, not by setting tok.padding_side: an abandoned call may still be using tok
        batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        batch = batch.to(self.model.device)
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            generator = torch.Generator(device=self.model.device).manual_seed(seed)
            processors += [
                TemperatureLogitsWarper(sampling.temperature),
                TopPLogitsWarper(sampling.top_p),
                _SampleWith(generator),
            ]
        stop_ids = sampling.stop_ids or [tok.eos_token_id]
        with torch.inference_mode():  # grad mode is per thread: set here, in the worker thread
            out = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_Beat(heartbeat)]),
                eos_token_id=stop_ids,
                pad_token_id=tok.pad_token_id,
                **({"stop_strings": sampling.stop, "tokenizer": tok} if sampling.stop else {}),
            )
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [cut_at_stop(t, sampling.stop) for t in texts]


class _SampleWith:
    """A logits processor that draws the next token from `generator` and masks every other token."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        chosen = torch.multinomial(probs, 1, generator=self.generator)
        masked = torch.full_like(scores, float("-inf"))
        return masked.scatter_(1, chosen, 0.0)


class _Beat:
    """A stopping criterion that never stops a live generation: it records each decoding step, and stops an
    abandoned one at its next step so a merely slow call frees the device."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.heartbeat.beat()
        return torch.full(
            (input_ids.shape[0],), self.heartbeat.abandoned, dtype=torch.bool, device=input_ids.device
        )


class VLLM:
    """vLLM's offline engine on the same model directory, with one seeded request per prompt.

    It reports no progress while a call runs: a stall here is a call that takes stall_s in all.
    """

    def __init__(self, path: str, tokenizer: Any, dtype: str, seed: int) -> None:
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, seed=seed)

    def generate(self, prompts: list[str], sampling: Sampling, seed: int, heartbeat: Heartbeat) -> list[str]:
        from vllm import SamplingParams

        requests = [
            {"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts
        ]
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=sampling.stop_ids or [self.tokenizer.eos_token_id],
                stop=sampling.stop or None,
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        heartbeat.beat()
        return [o.outputs[0].text for o in outputs]
