"""The HTTP API: OpenAI- and LightLLM-compatible endpoints plus operations endpoints, served by
aiohttp on the engine's event loop."""

from aiollm.api.cors import CorsOptions
from aiollm.api.server import create_app, run_server, serve

__all__ = ["CorsOptions", "create_app", "run_server", "serve"]
