"""`t2i serve`: a local web page to prompt any model, watch runs and compare models (needs `t2i[serve]`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from t2i.cli import HelpFormatter
from t2i.errors import T2IError


def add_parser(sub) -> None:
    """Register `t2i serve`."""
    from t2i.serve import Limits

    d = Limits()
    p = sub.add_parser(
        "serve", help="a local web page: generate, watch runs, compare models",
        description="Start a web server for one page with three views: Generate (any model under --runs and the "
                    "embedded default, with its family's sampling options), Runs (state, curves and sample grids of "
                    "every run, refreshed while it trains) and Compare (models side by side on the same prompts and "
                    "seeds, with the shapes oracle's verdict). Needs the serve extra: pip install 't2i[serve]'.",
        formatter_class=HelpFormatter)
    p.add_argument("--runs", metavar="DIR", help="folder of runs (e.g. runs/); the page shows only what is below it "
                   "(default: none, only the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but a loopback address lets "
                   "other machines use the server and its device")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (0: a free one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where every model runs, one request at a time")
    p.add_argument("--max_images", type=int, default=d.max_images, help="images per request")
    p.add_argument("--max_prompt_chars", type=int, default=d.max_prompt_chars, help="characters per prompt")
    p.add_argument("--max_queue", type=int, default=d.max_queue, help="requests waiting for the device")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise T2IError("t2i serve needs the serve extra: pip install 't2i[serve]' (FastAPI and uvicorn)") from None
    from t2i.serve.app import create_app
    from t2i.serve import Limits

    runs = Path(args.runs) if args.runs else None
    if runs is not None and not runs.is_dir():
        raise T2IError(f"--runs {args.runs!r} is not a folder; give the folder your runs are in (e.g. runs)")
    for name in ("max_images", "max_prompt_chars", "max_queue"):
        if getattr(args, name) < 1:
            raise T2IError(f"--{name} {getattr(args, name)} must be at least 1")
    if not 0 <= args.port <= 65535:
        raise T2IError(f"--port {args.port} must be from 0 to 65535")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"t2i serve: warning: listening on {args.host}: other machines can reach this server and use its "
              "device; there is no login", file=sys.stderr)
    limits = Limits(max_images=args.max_images, max_prompt_chars=args.max_prompt_chars, max_queue=args.max_queue)
    app = create_app(runs, limits, args.device)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    # The URL is printed once the socket listens (port 0 gets its real number), so scripts can wait for it.
    original = server.startup

    async def startup(sockets=None):
        await original(sockets)
        for s in server.servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"t2i serve: http://{shown}:{port}/ (runs: {runs or 'none'}; Ctrl-C stops)", flush=True)
                return

    server.startup = startup
    server.run()
    return 0
