"""What the handlers share, kept on the app under one typed key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from aiollm.api.http_errors import ApiError

if TYPE_CHECKING:
    from aiollm.engine import Engine


@dataclass(slots=True)
class ApiState:
    engine: Engine
    served_model_name: str | None  # None: the engine's model name (known once it is loaded)
    shutdown_timeout: float
    created: int  # unix time the app was made: /v1/models reports it
    draining: bool = False  # set when shutdown begins: /health turns 503 for load balancers

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.engine.model_name

    def check_model(self, name: str | None) -> None:
        """A request's `model` is only ever matched against the served name, never opened."""
        if name is not None and name != self.model_name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")

    def token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])


STATE = web.AppKey("aiollm_state", ApiState)


def state(request: web.Request) -> ApiState:
    return request.app[STATE]
