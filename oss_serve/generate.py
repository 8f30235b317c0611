"""Offline generation from the command line, without the engine:

    python -m oss_serve.generate --model-path PATH_OR_HUB_ID --prompt "San Francisco is a" \
        --max-new-tokens 20 --temperature 0
    python -m oss_serve.generate --model-path PATH --chat "What is 2+2?" --reasoning-effort low
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable

import torch

from oss_serve.model.attention import ContiguousKVBackend
from oss_serve.model.gpt_oss import GptOssForCausalLM
from oss_serve.server_args import ServerArgs


def generate_ids(model: GptOssForCausalLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 stop_token_ids: Iterable[int] = (), seed: int = 0) -> list[int]:
    """Prefill the prompt, then decode one token at a time; stops after a stop token (kept in the output)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    stops = set(stop_token_ids)
    cache = ContiguousKVBackend(model.config.num_layers)
    step_ids = prompt_ids
    output: list[int] = []
    while len(output) < max_new_tokens:
        positions = cache.prepare([(0, len(step_ids))]).to(device)
        hidden = model(torch.tensor(step_ids, device=device), positions, cache)
        cache.finish_step()
        logits = model.compute_logits(hidden[-1:])[0].cpu()
        if temperature == 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        output.append(token)
        if token in stops:
            break
        step_ids = [token]
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oss_serve.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ServerArgs.add_cli_args(parser, only=("model_path", "tokenizer_path", "revision", "load_format", "dtype",
                                          "device", "random_seed", "moe_backend"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="Raw text to continue.")
    source.add_argument("--chat", help="A user question, rendered as a harmony conversation.")
    parser.add_argument("--reasoning-effort", choices=("low", "medium", "high"), default="medium")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy.")
    parser.add_argument("--json", action="store_true", help="Print prompt_ids, output_ids and text as JSON.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.max_new_tokens < 1:
        print("error: --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    from oss_serve.harmony.encoding import get_harmony_encoding, stop_token_ids_for_assistant
    from oss_serve.model.loader import load_model
    from oss_serve.model.tokenizer import Tokenizer

    try:
        loaded = load_model(args.model_path, dtype=args.dtype, device=args.device, load_format=args.load_format,
                            revision=args.revision, seed=args.random_seed, moe_backend=args.moe_backend)
        tokenizer = Tokenizer.from_pretrained(args.tokenizer_path or loaded.folder)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.prompt is not None:
        prompt_ids = tokenizer.encode(args.prompt)
        stop_ids = tokenizer.eos_token_ids
    else:
        encoding = get_harmony_encoding()
        prompt_ids = render_chat_prompt(args.chat, args.reasoning_effort)
        stop_ids = stop_token_ids_for_assistant()
    output_ids = generate_ids(loaded.model, prompt_ids, args.max_new_tokens, args.temperature, stop_ids,
                              seed=args.random_seed)
    text = tokenizer.decode(output_ids)
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "output_ids": output_ids, "text": text}))
    elif args.prompt is not None:
        print(text)
    else:
        analysis, final = split_channels(encoding, output_ids)
        if not analysis and not final:
            # A random-weight model rarely writes valid harmony: show what it did write.
            print(f"[unparsed output]\n{tokenizer.decode(output_ids, skip_special_tokens=False)}")
        else:
            print(f"[analysis]\n{analysis}\n\n[final]\n{final}")
    return 0


def render_chat_prompt(question: str, reasoning_effort: str) -> list[int]:
    from openai_harmony import Conversation, Message, ReasoningEffort, Role, SystemContent

    from oss_serve.harmony.encoding import get_harmony_encoding

    system = SystemContent.new().with_reasoning_effort(ReasoningEffort(reasoning_effort.capitalize()))
    conversation = Conversation.from_messages([Message.from_role_and_content(Role.SYSTEM, system),
                                               Message.from_role_and_content(Role.USER, question)])
    return get_harmony_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT)


def split_channels(encoding, output_ids: list[int]) -> tuple[str, str]:
    """Analysis and final text of a completion, as far as it parses."""
    from openai_harmony import Role, StreamableParser

    parser = StreamableParser(encoding, role=Role.ASSISTANT, strict=False)
    try:
        for token in output_ids:
            parser.process(token)
    except Exception:  # malformed harmony: show what was parsed so far
        pass
    channels: dict[str, list[str]] = {"analysis": [], "final": []}
    for message in parser.messages:
        text = "".join(c.text for c in message.content if hasattr(c, "text"))
        channels.setdefault(message.channel or "final", []).append(text)
    if parser.current_content:
        channels.setdefault(parser.current_channel or "final", []).append(parser.current_content)
    return "\n".join(channels["analysis"]), "\n".join(channels["final"])


if __name__ == "__main__":
    raise SystemExit(main())
