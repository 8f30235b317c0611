"""Offline generation from the command line, through the offline engine (`oss_serve.LLM`):

    python -m oss_serve.generate --model-path PATH_OR_HUB_ID --prompt "San Francisco is a" \
        --max-new-tokens 20 --temperature 0
    python -m oss_serve.generate --model-path PATH --chat "What is 2+2?" --reasoning-effort low
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from oss_serve.server_args import ServerArgs

MODEL_FLAGS = ("model_path", "tokenizer_path", "revision", "load_format", "dtype", "device", "random_seed",
               "moe_backend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oss_serve.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ServerArgs.add_cli_args(parser, only=MODEL_FLAGS)
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
    from oss_serve.engine.llm import LLM  # imported late: it pulls in torch
    from oss_serve.engine.sampling_params import SamplingParams
    from oss_serve.harmony import render
    from oss_serve.harmony.encoding import stop_token_ids_for_assistant
    from oss_serve.harmony.parse import parse_output_tokens

    try:
        llm = LLM(args.model_path, **{name: getattr(args, name) for name in MODEL_FLAGS if name != "model_path"})
        tokenizer = llm.tokenizer
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.prompt is not None:
        prompt_ids, stop_ids = tokenizer.encode(args.prompt), []
    else:
        prompt_ids = render.render_prompt([render.user_message(args.chat)],
                                          render.PromptSettings(reasoning_effort=args.reasoning_effort))
        stop_ids = stop_token_ids_for_assistant()
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.random_seed,
                            stop_token_ids=stop_ids)
    output_ids = llm.generate([prompt_ids], params)[0].token_ids
    text = tokenizer.decode(output_ids)
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "output_ids": output_ids, "text": text}))
    elif args.prompt is not None:
        print(text)
    else:
        messages = parse_output_tokens(output_ids)
        analysis = "\n".join(m.text for m in messages if m.channel == "analysis")
        final = "\n".join(m.text for m in messages if m.channel != "analysis")
        if not analysis and not final:
            # A random-weight model rarely writes valid harmony: show what it did write.
            print(f"[unparsed output]\n{tokenizer.decode(output_ids, skip_special_tokens=False)}")
        else:
            print(f"[analysis]\n{analysis}\n\n[final]\n{final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
