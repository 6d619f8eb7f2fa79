"""`aiollm serve`'s start-up once its flags are parsed: their checks, then the HTTP server over
an Engine (or, on a node other than 0, a follower of node 0's ranks), with Ctrl-C handled from
the checks (a --chat-template pipe waits there) to the server's own signal handlers, and the
exit."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from aiollm.cli.lightllm_flags import answers_any_model
from aiollm.cli.log_config import configure_logging, messages_rewritten
from aiollm.cli.serve_checks import checked_config, cors_options, typed_flags
from aiollm.stop_signal import exit_status

log = logging.getLogger("aiollm.cli")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Serve as `args` (serve's parsed flags) say until SIGINT/SIGTERM: the exit status (0;
    1 when the model or the address fails; 130 for Ctrl-C before the server's signal
    handlers exist, and 130 or 143 for Ctrl-C or SIGTERM that gave up a tensor parallel
    start-up). A bad flag is parser.error, before anything loads; what the start logs names
    flags as the user typed them (typed_flags)."""
    configure_logging(args)
    with messages_rewritten(typed_flags(args)):
        return _serve(parser, args)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """run()'s start and serving, once the process's logging is set up."""
    try:  # a --chat-template pipe waits for its writer here
        config, api_keys = checked_config(parser, args)
    except KeyboardInterrupt:
        return 130
    names = args.served_model_name or []

    if args.node_rank > 0:  # another node's ranks: no HTTP, they follow node 0's rank 0
        from aiollm.distributed import RankLost
        from aiollm.distributed.follower import follow

        try:
            return follow(config)
        except (RankLost, OSError, ValueError) as e:
            # another rank's start-up failed (it logged its traceback), the rendezvous timed
            # out, or this node's own checks failed (its model, its GPUs)
            log.error("%s", e)
            return 1
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM in start-up (Terminated)
            # follow() ended this node's ranks; the collective it left in gloo's threads
            # would hold the interpreter's exit until the other ranks came
            logging.shutdown()
            os._exit(exit_status(e))

    # Importing torch & co. and loading create ~10^6 objects that live as long as the server;
    # the collections they would trigger find no garbage (a tenth of a warm start's CPU time).
    # The app collects once and freezes them when the engine is up, then turns it back on;
    # a run that ends before that (a usage error, a failed load) turns it back on here, for
    # a caller of main(argv) whose process goes on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # Ctrl-C while torch & co. import (seconds) printed a traceback of their imports
        import uvloop

        from aiollm.api import create_app, serve
        from aiollm.api.chat_request import TRUST_FLAG
        from aiollm.engine import Engine, served_format

        cors = cors_options(parser, args)
        app = create_app(Engine.from_config(config), api_key=api_keys,
                         served_model_name=names or None,
                         any_model=answers_any_model(args),
                         shutdown_timeout=args.shutdown_timeout, cors=cors,
                         trust_request_chat_template=args.trust_request_chat_template,
                         trust_request_chat_template_name=TRUST_FLAG,
                         chat_template_content_format=args.chat_template_content_format,
                         content_format_name=served_format.FLAG,
                         response_role=args.response_role,
                         return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                         max_stored_responses=args.max_stored_responses,
                         max_stored_response_bytes=args.max_stored_response_bytes)
        uvloop.run(serve(app, args.host, args.port))
    except KeyboardInterrupt as e:  # interrupted while loading (SIGTERM: see api.serve)
        return exit_status(e)
    except (FileNotFoundError, OSError, ValueError) as e:
        log.error("%s", e)  # the flags it names as the user typed them (messages_rewritten)
        return 1
    except RuntimeError as e:
        from aiollm.distributed import RankLost

        if not isinstance(e, RankLost):
            raise
        log.error("%s", e)  # a rank's start-up failed: it logged its traceback
        return 1
    finally:
        if collecting:
            gc.enable()
    _exit_if_compiling()
    return 0


def _exit_if_compiling() -> None:
    """End the process at once (code 0) while a grammar compilation runs: it cannot be
    interrupted, and the interpreter's exit waited for it (EXIT_WAIT, 5 s), then finalized
    for seconds more beside its threads (~7 s on 2 cores), and aborted with "terminate
    called without an active exception" (code 134) when it ended meanwhile."""
    from aiollm.engine.grammar_compile import compiling

    if n := compiling():
        log.info("exiting with %d grammar compilations under way", n)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
