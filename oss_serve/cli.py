"""The `oss-serve` command: `oss-serve launch ...` starts the server, `oss-serve tools ...` inspects tools."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from oss_serve.server_args import ToolArgs

USAGE = """usage: oss-serve <command> [args]

commands:
  launch   start the API server (same flags as python -m oss_serve.launch_server)
  tools    list the tools a --tool-server setting provides, or run one call
"""


def _tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oss-serve tools", description="Inspect and try tool servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print each namespace and tool with its schema")
    calling = commands.add_parser("call", help="run one call and print exactly what the model would receive")
    calling.add_argument("recipient", help="e.g. python, browser.search, <mcp namespace>.<tool>")
    calling.add_argument("arguments", nargs="?", default=None,
                         help="JSON arguments, or code for python (default: read from stdin)")
    for sub in (listing, calling):
        ToolArgs.add_cli_args(sub)
        sub.add_argument("--verbose", action="store_true", help="log what the tool servers do")
    return parser


def _print_namespaces(server: object) -> None:
    for namespace in server.namespaces():  # type: ignore[attr-defined]
        print(f"## {namespace.name}")
        if namespace.description:
            print(namespace.description)
        for tool in namespace.tools:
            print(f"\n### {namespace.name}.{tool.name}")
            if tool.description:
                print(tool.description)
            if tool.parameters is not None:
                print(json.dumps(tool.parameters, indent=2))
        print()


async def _run_tools(options: argparse.Namespace) -> int:
    from oss_serve.tools.factory import build_tool_server

    args = ToolArgs.from_cli_args(options)
    if not args.tool_server:
        print("oss-serve tools: --tool-server is required (demo, host:port, or an http://.../sse URL)", file=sys.stderr)
        return 2
    try:
        server = build_tool_server(args)
    except ValueError as error:
        print(f"oss-serve tools: {error}", file=sys.stderr)
        return 2
    if server is None:
        print("oss-serve tools: no tool could be enabled (see the warnings above)", file=sys.stderr)
        return 1
    try:
        try:
            await server.start()
        except Exception as error:  # noqa: BLE001 - a CLI reports, it does not trace back
            print(f"oss-serve tools: {error}", file=sys.stderr)
            return 1
        if options.command == "list":
            _print_namespaces(server)
            return 0
        if not server.has_tool(options.recipient):
            names = ", ".join(n.name for n in server.namespaces())
            print(f"oss-serve tools: no tool {options.recipient!r} (namespaces: {names})", file=sys.stderr)
            return 2
        arguments = options.arguments if options.arguments is not None else sys.stdin.read()
        session = await server.open_session()
        try:
            result = await session.call(options.recipient, arguments)
        finally:
            await session.close()
        sys.stdout.write(result.text)
        if not result.text.endswith("\n"):
            sys.stdout.write("\n")
        return 1 if result.is_error else 0
    finally:
        await server.aclose()


def tools_main(argv: list[str]) -> int:
    options = _tools_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if options.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return asyncio.run(_run_tools(options))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "launch":
        from oss_serve.launch_server import main as launch_main  # heavy imports only when serving

        return launch_main(rest) or 0
    if command == "tools":
        return tools_main(rest)
    print(f"oss-serve: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
